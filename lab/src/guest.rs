//! The lab's guest: a Debian cloud kernel and an initramfs whose /init is the project's memory
//! dirtier (`lab/guest/dirtier.c`), booted directly by QEMU under TCG.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;

const DIRTIER_C: &str = include_str!("../guest/dirtier.c");
/// The Debian meta-package whose dependency is the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";

#[derive(Clone, Debug)]
pub struct Assets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, LabError> {
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
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build (or reuse) the kernel and initramfs under `<lab_dir>/assets`.
pub fn setup(lab_dir: &Path, say: &dyn Fn(&str)) -> Result<Assets, LabError> {
    let dir = lab_dir.join("assets");
    fs::create_dir_all(&dir)
        .map_err(|e| LabError::Setup(format!("create {}: {e}", dir.display())))?;
    let assets = Assets {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
    };
    if !assets.kernel.is_file() {
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
        fs::copy(&vmlinuz, &assets.kernel).map_err(|e| LabError::Setup(e.to_string()))?;
        let _ = fs::remove_dir_all(&dl);
    }
    // Rebuild the initramfs whenever the dirtier's source changed.
    let stamp = dir.join("dirtier.c");
    if !assets.initrd.is_file() || fs::read_to_string(&stamp).ok().as_deref() != Some(DIRTIER_C) {
        say("building the guest initramfs (static dirtier as /init)");
        let root = dir.join("root");
        let _ = fs::remove_dir_all(&root);
        for d in ["dev", "proc"] {
            fs::create_dir_all(root.join(d)).map_err(|e| LabError::Setup(e.to_string()))?;
        }
        fs::write(&stamp, DIRTIER_C).map_err(|e| LabError::Setup(e.to_string()))?;
        run(
            Command::new("gcc")
                .args(["-O2", "-static", "-o"])
                .arg(root.join("init"))
                .arg(&stamp),
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
    }
    Ok(assets)
}

/// How the guest writes memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Seq,
    Random,
    Hot,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Seq => "seq",
            Pattern::Random => "random",
            Pattern::Hot => "hot",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GuestSpec {
    pub name: String,
    pub memory_mb: u32,
    pub dirty_mbps: u32,
    pub dirty_mb: u32,
    pub pattern: Pattern,
    pub hot_mb: u32,
}

impl GuestSpec {
    pub fn domain_xml(&self, assets: &Assets) -> String {
        format!(
            "<domain type='qemu'><name>{n}</name><memory unit='MiB'>{m}</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel><initrd>{i}</initrd>\
             <cmdline>console=ttyS0 quiet panic=-1 dirty_mbps={d} dirty_mb={w} pattern={p} hot_mb={h}</cmdline></os>\
             <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><controller type='usb' model='none'/>\
             <serial type='file'><source path='/var/log/libvirt/qemu/{n}.serial'/></serial>\
             <memballoon model='none'/></devices></domain>",
            n = self.name,
            m = self.memory_mb,
            k = assets.kernel.display(),
            i = assets.initrd.display(),
            d = self.dirty_mbps,
            w = self.dirty_mb,
            p = self.pattern.as_str(),
            h = self.hot_mb,
        )
    }
}

/// Wait until the guest's serial console (a file under the host's private log directory) shows
/// a dirtier status line; returns the last line.
pub fn wait_running(serial: &Path, timeout: Duration) -> Result<String, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(serial) {
            if let Some(l) = text.lines().rev().find(|l| l.starts_with("dirtier: t=")) {
                return Ok(l.to_string());
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Guest(format!(
                "no dirtier status on {} within {timeout:?} (boot failed?)",
                serial.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
