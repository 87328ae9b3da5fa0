#!/usr/bin/env bash
# deploy/install.sh: put Strongroom's system pieces in place on a Debian 12 host (docs/deploy.md).
#
#   deploy/install.sh [--root DIR] [--src DIR] [--skip-apache] [--no-apparmor-load] [--check]
#
# Creates the system users and groups, the directories with their owners and modes, installs the
# systemd units, the tmpfiles.d entry, the AppArmor profiles, the Apache site (and enables its
# modules) with its log filter and ModSecurity's logrotate rule, and first versions of
# /etc/strongroom/keyd.toml and webapp.env. Safe to run again: nothing is created twice, existing
# configuration files are kept, owners and modes are reset to the values below. Every change is one
# line of output; a run with nothing to do prints only "done". It never installs packages, never
# enables or starts a service.
#
# --root DIR   install into DIR instead of / (a throwaway tree or a chroot; users are created in
#              DIR/etc with useradd --prefix, owners are resolved from DIR/etc/passwd).
# --src DIR    the Strongroom checkout to install from (default: the one holding this script).
# --skip-apache  leave /etc/apache2 alone (a web node without Apache, or Apache not installed yet).
# --no-apparmor-load  copy the profiles but do not load them (loading happens only with --root /
#              on a kernel with AppArmor).
# --check      change nothing: print "install.sh: drift: WHAT" for each difference, exit 1 if any
#              (deploy/strongroom-install --check uses it).
set -euo pipefail
umask 022

ROOT=/
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SKIP_APACHE=0
LOAD_APPARMOR=1
CHECK=0
DRIFT=0
UNITS_CHANGED=0
PROFILES_CHANGED=0

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift 2 ;;
        --src) [ $# -ge 2 ] || die "--src needs a directory"; SRC="$2"; shift 2 ;;
        --skip-apache) SKIP_APACHE=1; shift ;;
        --no-apparmor-load) LOAD_APPARMOR=0; shift ;;
        --check) CHECK=1; shift ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it creates users and sets owners)"
[ -d "$ROOT" ] || die "root $ROOT is not a directory"
ROOT="$(cd "$ROOT" && pwd)"
# R is prefixed to every path written; empty for the real root.
if [ "$ROOT" = / ]; then R=""; PREFIX=(); else R="$ROOT"; PREFIX=(--prefix "$ROOT"); fi
[ -f "$R/etc/passwd" ] && [ -f "$R/etc/group" ] || die "$ROOT/etc/passwd or group missing"
for f in deploy/strongroom-keyd.service deploy/strongroom-web.service deploy/strongroom-mail.service \
         deploy/strongroom-tmpfiles.conf deploy/keyd.toml.in deploy/webapp.env.in \
         apparmor/strongroom-keyd apparmor/strongroom-web apparmor/strongroom-mail apparmor/strongroom-apache2 \
         apparmor/strongroom-health-agent; do
    [ -f "$SRC/$f" ] || die "$SRC/$f is missing: is --src a Strongroom checkout?"
done

# change WHAT CMD...: run CMD and say WHAT; with --check only report WHAT as drift. Every change
# goes through here, so a run that prints nothing but "done" changed nothing.
change() {
    local what="$1"
    shift
    if [ "$CHECK" -eq 1 ]; then
        echo "install.sh: drift: $what"
        DRIFT=1
    else
        "$@"
        say "$what"
    fi
}

# ---- users and groups -------------------------------------------------------------------------

gid_of() { awk -F: -v n="$1" '$1 == n { print $3; exit }' "$R/etc/group"; }
uid_of() { awk -F: -v n="$1" '$1 == n { print $3; exit }' "$R/etc/passwd"; }
members_of() { awk -F: -v n="$1" '$1 == n { print $4; exit }' "$R/etc/group"; }

ensure_group() {
    if [ -z "$(gid_of "$1")" ]; then
        change "group $1 created" groupadd "${PREFIX[@]}" --system "$1"
    fi
}

# ensure_user NAME PRIMARY_GROUP [SUPPLEMENTARY_GROUP...]
ensure_user() {
    local name="$1" primary="$2" g
    shift 2
    if [ -z "$(uid_of "$name")" ]; then
        # System user: no home, no login shell, locked password (useradd --system leaves it '!').
        change "user $name created" useradd "${PREFIX[@]}" --system --gid "$primary" --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin --comment "Strongroom $name" "$name"
        [ "$CHECK" -eq 0 ] || return 0
    fi
    for g in "$@"; do
        if ! members_of "$g" | tr ',' '\n' | grep -qx "$name"; then
            change "user $name added to group $g" usermod "${PREFIX[@]}" --append --groups "$g" "$name"
        fi
    done
    # An existing account of that name must not be able to log in either.
    if [ "$(awk -F: -v n="$name" '$1 == n { print $7; exit }' "$R/etc/passwd")" != /usr/sbin/nologin ]; then
        change "user $name: login shell set to nologin" usermod "${PREFIX[@]}" --shell /usr/sbin/nologin "$name"
    fi
}

[ -n "$(gid_of www-data)" ] || die "group www-data is missing in $ROOT/etc/group (Debian's base-passwd has it)"
ensure_group strongroom-keyd
ensure_group strongroom-keyd-clients  # whoever may connect to keyd's socket: keyd itself and the web app
ensure_group strongroom-web
ensure_user strongroom-keyd strongroom-keyd
ensure_user strongroom-web strongroom-web strongroom-keyd-clients

# ---- directories and files --------------------------------------------------------------------

# owner spec "user:group" resolved inside the target root (numeric chown: the host may differ).
# With --check an account that is still missing was reported already: its files are skipped.
ids() {
    local u="${1%%:*}" g="${1##*:}" uid gid
    uid="$(uid_of "$u")"; gid="$(gid_of "$g")"
    if [ -z "$uid" ] || [ -z "$gid" ]; then
        [ "$CHECK" -eq 1 ] && return 0
        die "unknown owner $1 in $ROOT"
    fi
    echo "$uid:$gid"
}

# owner_mode PATH IDS MODE: true when PATH already has that numeric owner and mode.
owner_mode() {
    [ "$(stat -c '%u:%g %a' "$R$1")" = "$2 $(printf '%o' "$((8#$3))")" ]
}

# chown/chmod follow symbolic links: a link planted where a directory or config file belongs
# would hand its target to our owners and modes. Refuse instead.
no_link() { [ ! -L "$R$1" ] || die "$ROOT$1 is a symbolic link: refusing (remove it, check who made it)"; }

set_owner_mode() { chown "$2" "$R$1" && chmod "$3" "$R$1"; }

# dir PATH MODE OWNER:GROUP
dir() {
    local owner
    no_link "$1"
    if [ ! -d "$R$1" ]; then
        change "directory $1 created" mkdir -p "$R$1"
        [ "$CHECK" -eq 0 ] || return 0
    fi
    owner="$(ids "$3")"
    [ -n "$owner" ] || return 0
    owner_mode "$1" "$owner" "$2" || change "$1: owner $3, mode $2" set_owner_mode "$1" "$owner" "$2"
}

# file SRC DEST MODE OWNER:GROUP: copy (replacing what is there when it differs). Returns 0 when it
# changed (or would change) something.
file() {
    local owner
    no_link "$2"
    owner="$(ids "$4")"
    if [ -f "$R$2" ] && cmp -s "$1" "$R$2" && [ -n "$owner" ] && owner_mode "$2" "$owner" "$3"; then
        return 1
    fi
    if [ -z "$owner" ]; then change "$2 installed" true; return 0; fi
    change "$2 installed" install -m "$3" -o "${owner%%:*}" -g "${owner##*:}" "$1" "$R$2"
}

# keep_file DEST MODE OWNER:GROUP CONTENT: written only when absent (operators edit it), then owner
# and mode are enforced every run.
write_new() { (umask 077; printf '%s\n' "$2" > "$R$1"); }
keep_file() {
    local owner
    no_link "$1"
    if [ ! -e "$R$1" ]; then
        change "$1 written (edit it: docs/deploy.md)" write_new "$1" "$4"
        [ "$CHECK" -eq 0 ] || return 0
    fi
    owner="$(ids "$3")"
    [ -n "$owner" ] || return 0
    owner_mode "$1" "$owner" "$2" || change "$1: owner $3, mode $2" set_owner_mode "$1" "$owner" "$2"
}

# The code is run by the services but must not be writable by them (or anyone but root): a
# compromised service could plant code for its next start. Checked, not changed: it is your checkout.
if [ -d "$R/opt/strongroom" ]; then
    bad="$(find "$R/opt/strongroom" \( ! -uid 0 -o -perm -0020 -o -perm -0002 \) -print -quit)"
    if [ -n "$bad" ]; then
        echo "install.sh: WARNING: ${bad#"$R"} is not root-owned or is group/world-writable;" \
            "run: chown -R root:root /opt/strongroom && chmod -R go-w /opt/strongroom" >&2
    fi
fi

dir /etc/strongroom 0755 root:root
dir /var/lib/strongroom-keyd 0700 strongroom-keyd:strongroom-keyd-clients
# keyd init runs as root and may leave root-owned files: hand them to keyd (it must append events).
keyd_ids="$(ids strongroom-keyd:strongroom-keyd-clients)"
if [ -n "$keyd_ids" ] && [ -d "$R/var/lib/strongroom-keyd" ] && [ -n "$(find "$R/var/lib/strongroom-keyd" \
        -mindepth 1 -maxdepth 1 \( ! -uid "${keyd_ids%%:*}" -o ! -gid "${keyd_ids##*:}" \) -print -quit)" ]; then
    change "files in /var/lib/strongroom-keyd handed to strongroom-keyd" find "$R/var/lib/strongroom-keyd" \
        -mindepth 1 -maxdepth 1 -exec chown -h "$keyd_ids" {} +
fi
dir /var/lib/strongroom-web 0700 strongroom-web:strongroom-web
# The alert spool (webapp/mail/spool.py): strongroom-mail.service's ReadWritePaths must exist before
# its first start (tmpfiles.d makes it only at the next boot).
dir /var/lib/strongroom-web/alert-spool 0700 strongroom-web:strongroom-web
# The same as deploy/strongroom-tmpfiles.conf does at every boot (tmpfiles.d is what makes /run).
dir /run/strongroom-web 0710 strongroom-web:www-data

web_uid="$(uid_of strongroom-web)"
keep_file /etc/strongroom/keyd.toml 0640 root:strongroom-keyd \
    "$(sed "s/@WEB_UID@/$web_uid/" "$SRC/deploy/keyd.toml.in")"
if [ ! -e "$R/etc/strongroom/webapp.env" ]; then
    secret="$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
    # The assignment line only: the template's comment names the placeholder too.
    keep_file /etc/strongroom/webapp.env 0640 root:strongroom-web \
        "$(sed "/^[[:space:]]*#/!s|@SECRET_KEY@|$secret|" "$SRC/deploy/webapp.env.in")"
    unset secret
else
    keep_file /etc/strongroom/webapp.env 0640 root:strongroom-web ""
fi

# systemd units (installed, never enabled or started here: docs/deploy.md says when).
dir /etc/systemd/system 0755 root:root
# The nightly jobs' timers (outbox prune, purge of retired cards) sit next to their services.
units=("$SRC"/deploy/*.service "$SRC"/deploy/*.timer "$SRC"/ops/deploy/*.service "$SRC"/ops/deploy/*.timer \
       "$SRC"/ca/deploy/*.service "$SRC"/ca/deploy/*.timer)
for unit in "${units[@]}"; do
    [ -f "$unit" ] || continue
    if file "$unit" "/etc/systemd/system/$(basename "$unit")" 0644 root:root; then UNITS_CHANGED=1; fi
done
dir /etc/tmpfiles.d 0755 root:root
file "$SRC/deploy/strongroom-tmpfiles.conf" /etc/tmpfiles.d/strongroom.conf 0644 root:root || true

# AppArmor profiles. strongroom-health-agent confines the balancer's health agent, whose unit
# deploy/strongroom-install renders only on a web node behind a balancer (its settings' [balancer]);
# the profile is installed everywhere, like the others, and confines nothing until that unit runs.
dir /etc/apparmor.d 0755 root:root
profiles=(strongroom-keyd strongroom-web strongroom-mail strongroom-apache2 strongroom-health-agent)
for p in "${profiles[@]}"; do
    if file "$SRC/apparmor/$p" "/etc/apparmor.d/$p" 0644 root:root; then PROFILES_CHANGED=1; fi
done

# ---- Apache -----------------------------------------------------------------------------------

if [ "$SKIP_APACHE" -eq 0 ]; then
    A="$R/etc/apache2"
    [ -d "$A/mods-available" ] || die "$ROOT/etc/apache2 is not Debian's apache2 (install it or use --skip-apache)"
    for f in apache/strongroom-site.conf apache/modules.txt apache/modsecurity-strongroom.conf \
             apache/logfilter.py apache/strongroom-logrotate; do
        [ -f "$SRC/$f" ] || die "$SRC/$f is missing (use --skip-apache to install without Apache)"
    done
    dir /etc/apache2/strongroom 0750 root:root
    file "$SRC/apache/strongroom-site.conf" /etc/apache2/sites-available/strongroom.conf 0644 root:root || true
    # Every other apache/*.conf is included by the site from ${STRONGROOM_CONF_DIR}
    # (modsecurity-strongroom.conf and what it includes).
    for conf in "$SRC"/apache/*.conf; do
        [ "$(basename "$conf")" = strongroom-site.conf ] && continue
        file "$conf" "/etc/apache2/strongroom/$(basename "$conf")" 0644 root:root || true
    done
    # Apache's piped error and audit loggers run it (${STRONGROOM_LOG_FILTER}): without it Apache
    # cannot start its loggers. Root's and read-only to everyone else: it runs as root.
    file "$SRC/apache/logfilter.py" /etc/apache2/strongroom/logfilter.py 0644 root:root || true
    # ModSecurity's audit log is rotated by size as well as daily (Debian's apache2 rule does not
    # cover its directory, apache/strongroom-logrotate says why).
    dir /etc/logrotate.d 0755 root:root
    file "$SRC/apache/strongroom-logrotate" /etc/logrotate.d/strongroom-modsecurity 0644 root:root || true
    # ModSecurity's scratch directory (SecTmpDir) for the site: the children (www-data) write there.
    dir /var/cache/modsecurity/strongroom-tmp 0700 www-data:www-data

    # Exactly the modules in apache/modules.txt (and their dependencies) are enabled (what a2enmod/a2dismod do, as plain
    # symlinks so it works in any root and the result is checkable): Debian's defaults such as
    # status, autoindex, alias or cgi are switched off, and the MPM is the listed one.
    wanted=" "
    while IFS= read -r mod || [ -n "$mod" ]; do
        mod="${mod%%#*}"; mod="$(echo "$mod" | tr -d '[:space:]')"
        [ -n "$mod" ] || continue
        [ -f "$A/mods-available/$mod.load" ] || die "Apache module $mod: $ROOT/etc/apache2/mods-available/$mod.load missing"
        wanted="$wanted$mod "
    done < "$SRC/apache/modules.txt"
    # Plus their "# Depends:" modules, as a2enmod would (ssl needs mime and setenvif).
    while :; do
        more=""
        for mod in $wanted; do
            for dep in $(sed -n 's/^# Depends:[[:space:]]*//p' "$A/mods-available/$mod.load"); do
                case "$wanted$more" in *" $dep "*) ;; *)
                    [ -f "$A/mods-available/$dep.load" ] || die "Apache module $dep (needed by $mod) missing"
                    more="$more$dep " ;;
                esac
            done
        done
        [ -n "$more" ] || break
        wanted="$wanted$more"
    done
    for link in "$A"/mods-enabled/*.load "$A"/mods-enabled/*.conf; do
        [ -e "$link" ] || [ -L "$link" ] || continue
        name="$(basename "$link")"; name="${name%.*}"
        case "$wanted" in *" $name "*) ;; *) change "Apache module $name disabled" rm -f "$link" ;; esac
    done
    # link TARGET LINK: a symlink with exactly that target.
    link() {
        [ -L "$2" ] && [ "$(readlink "$2")" = "$1" ] || change "${2#"$R"} -> $1" ln -sfn "$1" "$2"
    }
    for mod in $wanted; do
        for ext in load conf; do
            [ -f "$A/mods-available/$mod.$ext" ] || continue
            link "../mods-available/$mod.$ext" "$A/mods-enabled/$mod.$ext"
        done
    done
    link ../sites-available/strongroom.conf "$A/sites-enabled/strongroom.conf"
    for site in 000-default.conf default-ssl.conf; do
        if [ -e "$A/sites-enabled/$site" ] || [ -L "$A/sites-enabled/$site" ]; then
            change "Apache site $site disabled" rm -f "$A/sites-enabled/$site"
        fi
    done
    # The site has its own HTTPS Listen; Debian's ports.conf would add port 80 (and clash on 443).
    if [ -f "$A/ports.conf" ] && [ ! -e "$A/ports.conf.strongroom-orig" ]; then
        change "Debian's ports.conf kept as ports.conf.strongroom-orig" \
            cp -p "$A/ports.conf" "$A/ports.conf.strongroom-orig"
    fi
    ports="$(printf '%s\n' "# Strongroom (deploy/install.sh): no listeners here. The one HTTPS listener is in" \
        "# sites-available/strongroom.conf; Debian's original is ports.conf.strongroom-orig.")"
    write_ports() { printf '%s\n' "$ports" > "$A/ports.conf"; chown 0:0 "$A/ports.conf"; chmod 0644 "$A/ports.conf"; }
    if [ "$(cat "$A/ports.conf" 2> /dev/null)" != "$ports" ] || ! owner_mode /etc/apache2/ports.conf 0:0 0644; then
        change "/etc/apache2/ports.conf: no listeners" write_ports
    fi
fi

# ---- only on the real root: make the running system pick it up --------------------------------

if [ "$CHECK" -eq 1 ]; then
    if [ "$DRIFT" -eq 1 ]; then say "drift found (root $ROOT)"; exit 1; fi
    say "in step (root $ROOT)"
    exit 0
fi
if [ -z "$R" ]; then
    if [ "$PROFILES_CHANGED" -eq 1 ]; then
        if [ "$LOAD_APPARMOR" -eq 1 ] && [ -d /sys/kernel/security/apparmor ] && command -v apparmor_parser > /dev/null; then
            for p in "${profiles[@]}"; do apparmor_parser -r -W "/etc/apparmor.d/$p"; done
            say "AppArmor profiles loaded (enforce mode): check with aa-status"
        else
            say "AppArmor profiles copied, not loaded (no AppArmor in this kernel, or --no-apparmor-load)"
        fi
    fi
    if [ "$UNITS_CHANGED" -eq 1 ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        say "systemd reloaded; nothing enabled or started (docs/deploy.md)"
    fi
fi
say "done (root $ROOT)"
