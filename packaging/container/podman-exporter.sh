#!/usr/bin/env bash
# Stands in for the vm-migration-exporter binary, running it in the container image instead:
# the lab (lab/src/exporter.rs) starts "the exporter" with --libvirt.uri
# qemu:///system?socket=DIR/libvirt-sock, --storage.path and --trace.path; this runs the image
# with DIR mounted read-only at /var/run/libvirt (so the image's default qemu:///system finds
# libvirt-sock-ro there, as on a real host), host /proc and /sys read-only, the host network and
# PID namespace, every capability dropped but NET_RAW, SYS_PTRACE and DAC_READ_SEARCH, and a
# read-only root file system. The exporter's log goes to stderr as the binary's would.
#   VM_MIGRATION_EXPORTER_IMAGE  the image (default localhost/vm-migration-exporter:check)
#   CONTAINERS_CONF              podman settings (scripts/check-container.sh sets it)
# The container goes away with this script: killed (even SIGKILL), a watcher removes it.
set -euo pipefail
image=${VM_MIGRATION_EXPORTER_IMAGE:-localhost/vm-migration-exporter:check}
args=()
mounts=()
while [ $# -gt 0 ]; do
  a=$1; shift
  case "$a" in
    --libvirt.uri=*|--libvirt.uri)
      if [ "$a" = --libvirt.uri ]; then uri=$1; shift; else uri=${a#*=}; fi
      case "$uri" in
        *'?socket='*)
          sock=${uri#*\?socket=}; sock=${sock%%&*}
          mounts+=(-v "$(dirname "$sock"):/var/run/libvirt:ro")
          args+=(--libvirt.uri=qemu:///system) ;;
        *) args+=(--libvirt.uri="$uri") ;;
      esac ;;
    --storage.path|--trace.path)
      p=$1; shift
      if [ -n "$p" ]; then
        if [ "$a" = --storage.path ]; then mkdir -p "$p"; d=$p; else mkdir -p "$(dirname "$p")"; d=$(dirname "$p"); fi
        mounts+=(-v "$d:$d")
      fi
      args+=("$a=$p") ;;
    *) args+=("$a") ;;
  esac
done

name=vme-check-$$-$RANDOM
podman run -d --name "$name" --label vm-migration-exporter-check=1 \
  --network host --pid host --read-only \
  --cap-drop all --cap-add net_raw,sys_ptrace,dac_read_search \
  -v /proc:/host/proc:ro -v /sys:/host/sys:ro "${mounts[@]}" \
  "$image" --path.procfs=/host/proc --path.sysfs=/host/sys "${args[@]}" >/dev/null
self=$$
( while kill -0 "$self" 2>/dev/null; do sleep 0.5; done
  podman rm -f -t 2 "$name" >/dev/null 2>&1 ) </dev/null >/dev/null 2>&1 &
exec podman logs -f "$name"
