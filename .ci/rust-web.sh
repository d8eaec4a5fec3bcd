# Sourced by windows.sh and macos.sh. Debian's rustc-web from package lists that were never
# updated can be 1.85, which cannot build the standard library these scripts need (rsbegin.o
# for windows-gnu) and is older than the rust-version of some dev-dependencies. Upgrades the
# given packages when the installed compiler is older than 1.88, as root only.
rust_web_upgrade_if_old() {
  local minor
  minor=$(/usr/bin/rustc --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9][0-9]*\)\..*/\1/p')
  if [ "${minor:-0}" -ge 88 ] || [ "$(id -u)" != 0 ]; then
    return 0
  fi
  echo "rust-web.sh: /usr/bin/rustc is 1.${minor:-?}; updating the package lists and upgrading $*" >&2
  timeout 120 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
