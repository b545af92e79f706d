#!/usr/bin/env bash
# Build (and smoke-test) the sidecar's images with Debian's podman and no registry:
#   image/build.sh build [pip] [selfcontained]   build, then save docker-archives under build/image/
#   image/build.sh exec [KINDS...] -- CMD...      build, then run CMD with the podman setup exported
#   image/build.sh base                           only make (or check) the cached base tarballs
# The base images are `debootstrap --variant=minbase` roots imported with `podman import`, cached by
# month outside the repo. Storage and config live in one temp folder removed at exit: nothing is left in
# /var/lib/containers, no bridge or firewall rule is made (host network for build and run).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
suite=bookworm
month=$(date -u +%Y-%m)
cache=${SIDECAR_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar-image}
tag=${SIDECAR_IMAGE_TAG:-test}
# The Python base (for the pip image and the self-contained build stage) and the base without Python
# (the agent image that gets only the self-contained folder).
base_pkgs_python=python3,python3-venv,python3-pip,ca-certificates
base_pkgs_bare=ca-certificates

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Debian packages this needs, installed when missing and we are root (like the Makefile's sysdeps).
sysdeps() {
    local missing="" d
    for d in podman:podman runc:runc debootstrap:debootstrap; do
        command -v "${d%%:*}" >/dev/null 2>&1 || missing="$missing ${d#*:}"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "apt-get install$missing"
        apt-get update -qq
        # shellcheck disable=SC2086  # a list of package names
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
            --no-install-recommends $missing >/dev/null
    else
        die "missing$missing (install them, as root: apt-get install$missing)"
    fi
}

# The Debian mirror apt is configured with (deb822 .sources or one-line .list); never written in the repo.
apt_mirror() {
    if [ -n "${SIDECAR_APT_MIRROR:-}" ]; then echo "$SIDECAR_APT_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk 'BEGIN{RS=""; FS="\n"}
            { types=""; uris=""; suites="";
              for (i = 1; i <= NF; i++) {
                if ($i ~ /^Types:/) types = $i; else if ($i ~ /^URIs:/) uris = $i; else if ($i ~ /^Suites:/) suites = $i }
              if (types ~ /(^|[ :])deb( |$)/ && uris !~ /security/ && suites ~ /[ :][a-z]+( |$)/) {
                sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i ~ /:\/\//) { if ($i !~ /security/ && $(i+1) !~ /-security$/) { print $i; exit } else break } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    die "no Debian mirror in /etc/apt/sources.list*; set SIDECAR_APT_MIRROR"
}

# A debootstrap root as a tarball, made once a month: $1 = name, $2 = extra packages.
base_tarball() {
    local name=$1 pkgs=$2 out="$cache/base-$1-$suite-$month.tar"
    if [ ! -s "$out" ]; then
        [ "$(id -u)" = 0 ] || die "debootstrap needs root"
        mkdir -p "$cache" "$cache/debs"
        local root; root=$(mktemp -d "$work/root-$name.XXXX")
        local mirror; mirror=$(apt_mirror)
        log "debootstrap --variant=minbase $suite ($name: $pkgs)"
        debootstrap --variant=minbase --include="$pkgs" --cache-dir="$cache/debs" "$suite" "$root" "$mirror" \
            >"$work/debootstrap-$name.log" 2>&1 || { tail -20 "$work/debootstrap-$name.log" >&2; die "debootstrap failed"; }
        # Slim like Debian's -slim images: no docs (copyrights stay), man pages or translations, now or in
        # packages installed later; no package lists or .debs.
        cat >"$root/etc/dpkg/dpkg.cfg.d/sidecar-slim" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CONF
        find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
        rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
        find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
            "$root"/var/log/*.log "$root"/var/log/apt/*
        tar -C "$root" --numeric-owner -cf "$out.tmp" . && mv "$out.tmp" "$out"
        rm -rf "$root"
        # Last month's bases and package cache are stale now.
        find "$cache" -maxdepth 1 -name "base-$name-$suite-*.tar" ! -name "$(basename "$out")" -delete
    fi
    echo "$out"
}

# One temp folder holds podman's storage, run state and config for this run.
setup_podman() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/sidecar-image.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$work/storage" "$work/run" "$work/tmp"
    cat >"$work/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
CONF
    # runc: crun fails on hybrid cgroups here. default_ulimits: root lacks CAP_SYS_RESOURCE, so podman cannot
    # raise the limits it would copy from the host. The host network: no bridge, no firewall rule.
    cat >"$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$work/events.log"
tmp_dir = "$work/tmp"
volume_path = "$work/storage/volumes"
CONF
    export CONTAINERS_STORAGE_CONF="$work/storage.conf" CONTAINERS_CONF="$work/containers.conf"
    export TMPDIR="$work/tmp"
}

cleanup() {
    local rc=$?
    if [ -n "${work:-}" ] && [ -d "$work" ]; then
        # Containers first, then the storage (its overlay mounts) and the folder itself.
        podman rm -a -f -t 0 >/dev/null 2>&1 || true
        podman system reset -f >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
    exit "$rc"
}

# pip inside the build reaches the index the way this machine's pip does: its CA bundle (bind-mounted
# read-only over the base's bundle for the RUN steps) and the network part of its configuration (a build
# secret the Dockerfiles mount at /etc/pip.conf for their pip steps), so nothing of either lands in an
# image: a secret leaves no file behind, and the bundle's path exists in the base already. Local-path
# settings (find-links, file:// indexes, constraint files) stay out: the build pins its versions with
# image/requirements*.txt.
pip_mounts() {
    local py ca="" conf="$work/pip.conf" line key value
    py=$(command -v python3 || true)
    printf '[global]\n' >"$conf"
    if [ -n "$py" ] && "$py" -m pip --version >/dev/null 2>&1; then
        while IFS= read -r line; do
            key=${line%%=*}; key=${key#*.}; value=${line#*=}; value=${value#\'}; value=${value%\'}
            case "$key" in
            cert) ca=$value ;;
            index-url|extra-index-url|trusted-host|proxy|timeout|default-timeout|retries)
                value=$(printf '%s\n' $value | { grep -v '^file:' || true; } | tr '\n' ' ')
                if [ -n "${value// }" ]; then printf '%s = %s\n' "${key/default-timeout/timeout}" "$value" >>"$conf"; fi ;;
            esac
        done < <("$py" -m pip config list 2>/dev/null || true)
    fi
    ca=${ca:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
    if [ -f "$ca" ]; then
        printf 'cert = /etc/ssl/certs/ca-certificates.crt\n' >>"$conf"
        echo "--volume=$ca:/etc/ssl/certs/ca-certificates.crt:ro"
    fi
    echo "--secret=id=pip.conf,src=$conf"
}

import_bases() {
    local python bare
    python=$(base_tarball python "$base_pkgs_python")
    bare=$(base_tarball bare "$base_pkgs_bare")
    podman import -q "$python" "localhost/sidecar-base-python:$suite" >/dev/null
    podman import -q "$bare" "localhost/sidecar-base-bare:$suite" >/dev/null
}

# $1 = kind (pip | selfcontained): build it as localhost/sidecar-$1:$tag.
build_one() {
    local kind=$1 file
    case "$kind" in
    pip) file="$repo/Dockerfile" ;;
    selfcontained) file="$repo/image/Dockerfile.selfcontained" ;;
    *) die "unknown image kind $kind (pip or selfcontained)" ;;
    esac
    local -a mounts
    mapfile -t mounts < <(pip_mounts)
    log "podman build $kind"
    # --format docker: the OCI format drops HEALTHCHECK. --pull=never: the bases are local.
    podman build -q --pull=never --network host --format docker "${mounts[@]}" \
        --build-arg "BASE=localhost/sidecar-base-python:$suite" \
        --build-arg "BARE_BASE=localhost/sidecar-base-bare:$suite" \
        -f "$file" -t "localhost/sidecar-$kind:$tag" "$repo" >/dev/null
}

main() {
    local cmd=${1:-build}; shift || true
    local -a kinds=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do kinds+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    [ ${#kinds[@]} -gt 0 ] || kinds=(pip selfcontained)
    case "$cmd" in
    build|base) ;;
    exec) [ $# -gt 0 ] || die "exec needs a command after --" ;;
    *) die "unknown command $cmd (build, exec or base)" ;;
    esac
    for kind in "${kinds[@]}"; do
        case "$kind" in pip|selfcontained) ;; *) die "unknown image kind $kind (pip or selfcontained)" ;; esac
    done
    sysdeps
    setup_podman
    local t0=$SECONDS kind
    import_bases
    log "bases ready in $((SECONDS - t0)) s"
    [ "$cmd" = base ] && return 0
    for kind in "${kinds[@]}"; do build_one "$kind"; done
    log "built ${kinds[*]} in $((SECONDS - t0)) s"
    case "$cmd" in
    build)
        mkdir -p "$repo/build/image"
        for kind in "${kinds[@]}"; do
            podman save -q --format docker-archive -o "$repo/build/image/sidecar-$kind.tar" \
                "localhost/sidecar-$kind:$tag"
            log "saved build/image/sidecar-$kind.tar (docker load -i it)"
        done ;;
    exec)
        local images=""
        for kind in "${kinds[@]}"; do images="$images $kind=localhost/sidecar-$kind:$tag"; done
        # Not exec: the trap removes the temp folder when the command is done.
        SIDECAR_IMAGES=${images# } "$@" ;;
    esac
}

main "$@"; exit  # on this line: an edit to this file while it runs cannot add commands
