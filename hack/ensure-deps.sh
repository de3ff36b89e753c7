#!/usr/bin/env bash
# Installs what `make test` and `make demo` need beyond this machine kind's toolchains:
# Debian packages (protoc for etcd-client's build, openssl, curl, util-linux's setpriv; runc,
# busybox-static and file for the real node and its images).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

for tool in go cargo python3; do
  command -v "$tool" >/dev/null || die "$tool is required and not installed (it ships with this machine kind)"
done

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v setpriv >/dev/null || missing+=(util-linux)
# The real node (hack/node.sh): runc runs containers, busybox-static is the workload image's shell.
command -v runc >/dev/null || missing+=(runc)
[[ -x /bin/busybox ]] || missing+=(busybox-static)
command -v file >/dev/null || missing+=(file)
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
