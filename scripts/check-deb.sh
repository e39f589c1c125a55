#!/usr/bin/env bash
# scripts/check-deb.sh: build the Debian package and check what it installs. Run by
# scripts/test.sh after `cargo test`; fails with a reason on the first missing piece.
#
#   1. cargo-deb, pinned, installed when missing (about 3-4.5 min on 2 cores, once per machine).
#   2. The .deb of the debug binary `cargo test` already built (--profile dev --no-build): the
#      contents are what is checked, and a release build would add minutes to CI. Releases use
#      plain `cargo deb` (README).
#   3. dpkg-deb -c: the binary, both units, the config as a conffile; dpkg-deb -I: the
#      maintainer scripts; the postinst run twice against stub commands creates the user once.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

die() { printf 'scripts/check-deb.sh: %s\n' "$*" >&2; exit 1; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v dpkg-deb >/dev/null || die "dpkg-deb missing: apt-get install dpkg"

if [[ $(cargo deb --version 2>/dev/null) != *" $CARGO_DEB_VERSION"* ]]; then
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

cargo build --locked --bin rampart
# --fast: gzip instead of xz; xz takes minutes on a debug-sized binary.
deb=$(cargo deb --profile dev --no-build --fast 2>/dev/null | tail -n 1)
[[ -f $deb ]] || die "cargo deb produced no package (got: $deb)"

contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/rampart ./lib/systemd/system/rampart.service \
  ./lib/systemd/system/rampart.socket ./etc/rampart/rampart.yaml; do
  [[ $contents == *" $path"$'\n'* || $contents == *" $path" ]] || die "$deb lacks $path:"$'\n'"$contents"
done
info=$(dpkg-deb -I "$deb")
for script in postinst prerm postrm conffiles; do
  [[ $info == *" $script "* ]] || die "$deb has no $script:"$'\n'"$info"
done
[[ $(dpkg-deb -f "$deb" Depends) == *adduser* ]] || die "$deb does not depend on adduser"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"
dpkg-deb -e "$deb" "$work/control"
[[ $(cat "$work/control/conffiles") == /etc/rampart/rampart.yaml ]] || die "conffiles: $(cat "$work/control/conffiles")"
"$work/root/usr/bin/rampart" check -c "$work/root/etc/rampart/rampart.yaml" >/dev/null \
  || die "the packaged /etc/rampart/rampart.yaml is invalid"

# postinst against stubs (no user is created on this machine): a second configure is a no-op.
mkdir "$work/bin"
cat >"$work/bin/getent" <<STUB
#!/bin/sh
grep -q "^\$2:" "$work/passwd" 2>/dev/null
STUB
cat >"$work/bin/adduser" <<STUB
#!/bin/sh
echo "\$*" >>"$work/adduser.log"
echo "rampart:x:999:999::/var/lib/rampart:/usr/sbin/nologin" >>"$work/passwd"
STUB
printf '#!/bin/sh\nexit 0\n' >"$work/bin/systemctl"
chmod 755 "$work/bin/"*
PATH="$work/bin:$PATH" sh -e "$work/control/postinst" configure ''
PATH="$work/bin:$PATH" sh -e "$work/control/postinst" configure 0.1.0-1
[[ $(wc -l <"$work/adduser.log") -eq 1 ]] || die "postinst is not idempotent: $(cat "$work/adduser.log")"
[[ $(cat "$work/adduser.log") == *"--system"*"rampart" ]] || die "postinst: adduser $(cat "$work/adduser.log")"
for script in prerm postrm; do sh -n "$work/control/$script" || die "$script: syntax error"; done

echo "scripts/check-deb.sh: $deb is complete"
