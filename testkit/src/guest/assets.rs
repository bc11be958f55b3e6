//! The guest's boot assets: a Debian cloud kernel, its NIC modules and an initramfs whose /init
//! is the project's memory dirtier (`testkit/guest/dirtier.c`), built once and reused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::LabError;

const DIRTIER_C: &str = include_str!("../../guest/dirtier.c");
/// The Debian meta-package whose dependency is the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";

#[derive(Clone, Debug)]
pub struct Assets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Run `cmd`; its standard output, or an error naming `what` with its standard error.
fn run_bytes(cmd: &mut Command, what: &str) -> Result<Vec<u8>, LabError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Setup(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(LabError::Setup(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn run(cmd: &mut Command, what: &str) -> Result<String, LabError> {
    run_bytes(cmd, what).map(|o| String::from_utf8_lossy(&o).into_owned())
}

/// Modules the guest's application NIC needs (virtio-net on virtio-pci); their dependencies are
/// found from each module's `.modinfo` and loaded first.
const NIC_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// Build (or reuse) the kernel, its NIC modules and the initramfs under `<lab_dir>/assets`.
pub fn setup(lab_dir: &Path, say: &dyn Fn(&str)) -> Result<Assets, LabError> {
    let dir = lab_dir.join("assets");
    fs::create_dir_all(&dir)
        .map_err(|e| LabError::Setup(format!("create {}: {e}", dir.display())))?;
    let assets = Assets {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
    };
    let modules = dir.join("modules");
    // vmlinuz and the modules come from one package: fetch both when either is missing.
    if !assets.kernel.is_file() || !modules.join("load").is_file() {
        say("downloading the Debian cloud kernel (apt-get download, ~27 MB)");
        let kernel_package = || -> Option<String> {
            let deps = run(
                Command::new("apt-cache").args(["depends", KERNEL_META]),
                "apt-cache depends",
            )
            .ok()?;
            deps.lines()
                .find_map(|l| l.trim().strip_prefix("Depends: "))
                .map(|p| p.trim().to_string())
        };
        // A fresh machine may have no package lists yet: refresh them once.
        let pkg = match kernel_package() {
            Some(p) => p,
            None => {
                say("apt has no package lists: running apt-get update");
                run(
                    Command::new("apt-get").args(["update", "-q"]),
                    "apt-get update",
                )?;
                kernel_package().ok_or_else(|| {
                    LabError::Setup(format!(
                        "apt knows no {KERNEL_META} even after apt-get update"
                    ))
                })?
            }
        };
        let dl = dir.join("download");
        let _ = fs::remove_dir_all(&dl);
        fs::create_dir_all(&dl).map_err(|e| LabError::Setup(e.to_string()))?;
        run(
            Command::new("apt-get")
                .args(["download", &pkg])
                .current_dir(&dl),
            "apt-get download",
        )?;
        let deb = fs::read_dir(&dl)
            .map_err(|e| LabError::Setup(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| LabError::Setup("apt-get download left no .deb".into()))?;
        let x = dl.join("x");
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
            "dpkg-deb -x",
        )?;
        let vmlinuz = fs::read_dir(x.join("boot"))
            .map_err(|e| LabError::Setup(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or_else(|| LabError::Setup("the kernel package holds no boot/vmlinuz-*".into()))?;
        let release = vmlinuz
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default();
        extract_modules(&x.join("lib/modules").join(&release), &release, &modules)?;
        fs::copy(&vmlinuz, &assets.kernel).map_err(|e| LabError::Setup(e.to_string()))?;
        let _ = fs::remove_dir_all(&dl);
    }
    // Rebuild the initramfs whenever the dirtier's source or the module set changed.
    let load = fs::read_to_string(modules.join("load"))
        .map_err(|e| LabError::Setup(format!("{}: {e}", modules.join("load").display())))?;
    let mut stamp_text = format!("{DIRTIER_C}\n--- modules ---\n");
    for name in load.lines().chain(["release"]) {
        let bytes = fs::read(modules.join(name))
            .map_err(|e| LabError::Setup(format!("{}: {e}", modules.join(name).display())))?;
        stamp_text += &format!("{name} {} {:016x}\n", bytes.len(), fnv1a(&bytes));
    }
    let stamp = dir.join("initrd.stamp");
    if !assets.initrd.is_file() || fs::read_to_string(&stamp).ok() != Some(stamp_text.clone()) {
        say("building the guest initramfs (static dirtier as /init, NIC modules)");
        let root = dir.join("root");
        let _ = fs::remove_dir_all(&root);
        for d in ["dev", "proc", "lib/modules"] {
            fs::create_dir_all(root.join(d)).map_err(|e| LabError::Setup(e.to_string()))?;
        }
        for name in load.lines().chain(["load"]) {
            fs::copy(modules.join(name), root.join("lib/modules").join(name))
                .map_err(|e| LabError::Setup(format!("copy module {name}: {e}")))?;
        }
        let source = dir.join("dirtier.c");
        fs::write(&source, DIRTIER_C).map_err(|e| LabError::Setup(e.to_string()))?;
        run(
            Command::new("gcc")
                .args(["-O2", "-static", "-o"])
                .arg(root.join("init"))
                .arg(&source),
            "gcc -static dirtier.c (needs gcc and libc6-dev)",
        )?;
        run(
            Command::new("sh").arg("-c").arg(format!(
                "cd '{}' && find . | cpio -o -H newc --quiet | gzip -9 > '{}'",
                root.display(),
                assets.initrd.display()
            )),
            "cpio | gzip",
        )?;
        fs::write(&stamp, stamp_text).map_err(|e| LabError::Setup(e.to_string()))?;
    }
    Ok(assets)
}

/// A stable fingerprint of a file's content for the initramfs stamp (FNV-1a, 64 bit).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Copy [`NIC_MODULES`] and what they depend on from an extracted `lib/modules/<release>` to
/// `out` as plain `.ko` files (decompressing `.ko.xz`, `.ko.zst`, `.ko.gz`), and write
/// `out/load`, their file names in load order (dependencies first), and `out/release`.
fn extract_modules(tree: &Path, release: &str, out: &Path) -> Result<(), LabError> {
    let mut index = std::collections::BTreeMap::new();
    index_modules(&tree.join("kernel"), &mut index)?;
    let builtin = fs::read_to_string(tree.join("modules.builtin")).unwrap_or_default();
    let is_builtin = |name: &str| {
        builtin.lines().any(|l| {
            l.rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".ko"))
                .is_some_and(|f| f.replace('-', "_") == name)
        })
    };
    // Depth-first, dependencies before dependents.
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    let mut stack: Vec<(String, bool)> = NIC_MODULES
        .iter()
        .rev()
        .map(|m| (m.to_string(), false))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut deps_of = std::collections::BTreeMap::new();
    while let Some((name, expanded)) = stack.pop() {
        if expanded {
            if let Some(ko) = deps_of.remove(&name) {
                order.push((name, ko));
            }
            continue;
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(path) = index.get(&name) else {
            if is_builtin(&name) {
                continue;
            }
            return Err(LabError::Setup(format!(
                "the kernel {release} has no module {name} (needed for the guest NIC)"
            )));
        };
        let ko = read_module(path)?;
        let deps = modinfo(&ko, "depends")
            .ok_or_else(|| LabError::Setup(format!("{}: no .modinfo", path.display())))?;
        stack.push((name.clone(), true));
        for d in deps.split(',').filter(|d| !d.is_empty()).rev() {
            stack.push((d.replace('-', "_"), false));
        }
        deps_of.insert(name, ko);
    }
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out).map_err(|e| LabError::Setup(e.to_string()))?;
    let mut load = String::new();
    for (name, ko) in &order {
        fs::write(out.join(format!("{name}.ko")), ko)
            .map_err(|e| LabError::Setup(format!("write {name}.ko: {e}")))?;
        load += &format!("{name}.ko\n");
    }
    fs::write(out.join("release"), format!("{release}\n"))
        .map_err(|e| LabError::Setup(e.to_string()))?;
    // Written last: its presence says the set is complete.
    fs::write(out.join("load"), load).map_err(|e| LabError::Setup(e.to_string()))
}

/// Module name (dashes as underscores) → file, for every module under `dir`.
fn index_modules(
    dir: &Path,
    index: &mut std::collections::BTreeMap<String, PathBuf>,
) -> Result<(), LabError> {
    let entries =
        fs::read_dir(dir).map_err(|e| LabError::Setup(format!("{}: {e}", dir.display())))?;
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(stem) = path.file_name().and_then(|n| {
            let n = n.to_str()?;
            [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find_map(|x| n.strip_suffix(x))
        }) {
            index.insert(stem.replace('-', "_"), path.clone());
        }
    }
    Ok(())
}

/// A module's ELF image, decompressed if the package compressed it.
fn read_module(path: &Path) -> Result<Vec<u8>, LabError> {
    let name = path.to_string_lossy();
    let tool = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
        .into_iter()
        .find(|(x, _)| name.ends_with(x))
        .map(|(_, t)| t);
    match tool {
        None => fs::read(path).map_err(|e| LabError::Setup(format!("{name}: {e}"))),
        Some(t) => run_bytes(
            Command::new(t).arg("-dc").arg(path),
            &format!("{t} -dc {name}"),
        ),
    }
}

/// The value of `key` in a kernel module's `.modinfo` section (NUL-separated `key=value`).
fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(ko.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(ko.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(ko.get(o..o + 8)?.try_into().ok()?));
    // ELF64 little-endian only (x86_64 modules).
    if ko.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    // (name offset, file offset, size) of section i.
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            usize::try_from(u32_at(h)?).ok()?,
            usize::try_from(u64_at(h + 0x18)?).ok()?,
            usize::try_from(u64_at(h + 0x20)?).ok()?,
        ))
    };
    let (_, strtab, _) = section(shstrndx)?;
    let prefix = format!("{key}=");
    (0..shnum).find_map(|i| {
        let (name, off, size) = section(i)?;
        let n = ko.get(strtab.checked_add(name)?..)?;
        let n = &n[..n.iter().position(|b| *b == 0)?];
        if n != b".modinfo" {
            return None;
        }
        ko.get(off..off.checked_add(size)?)?
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}
