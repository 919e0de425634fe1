#!/usr/bin/env bash
# PostgreSQL + pgvector for the PostgreSQL gallery tests (tests/postgres), as on a fresh
# Debian 12 machine. Idempotent and fast when everything is present.
#
#   scripts/install-postgres.sh            # apt packages if missing, then pgvector if missing
#
# Debian 12 packages PostgreSQL 15 but not pgvector: it is built from the unmodified
# upstream release in ../shared/third_party (see its README). OPTFLAGS="" keeps the
# build portable: pgvector's default -march=native makes a binary that dies with
# SIGILL on an older CPU than the one that built it.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR="${FACEREC_PG_MAJOR:-15}"
PGVECTOR_VERSION=0.8.6
PGVECTOR_TARBALL="${FACEREC_PGVECTOR_TARBALL:-../shared/third_party/pgvector-${PGVECTOR_VERSION}.tar.gz}"
PGVECTOR_SHA256=5743dac39fdfa740533cf95e71b033bd5513b71dda194b3cf19464ccbf76f3fb
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)

missing=()
[ -x "/usr/lib/postgresql/${PG_MAJOR}/bin/postgres" ] || missing+=("postgresql-${PG_MAJOR}")
[ -x "${PG_CONFIG}" ] && [ -f "$("${PG_CONFIG}" --includedir-server)/postgres.h" ] \
  || missing+=("postgresql-server-dev-${PG_MAJOR}")
command -v make >/dev/null && command -v gcc >/dev/null || missing+=(build-essential)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-postgres: apt-get install ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

control="$("${PG_CONFIG}" --sharedir)/extension/vector.control"
library="$("${PG_CONFIG}" --pkglibdir)/vector.so"
if [ -f "${control}" ] && [ -f "${library}" ] \
  && grep -q "default_version = '${PGVECTOR_VERSION}'" "${control}"; then
  exit 0
fi

echo "install-postgres: building pgvector ${PGVECTOR_VERSION} for PostgreSQL ${PG_MAJOR}"
echo "${PGVECTOR_SHA256}  ${PGVECTOR_TARBALL}" | sha256sum --check --quiet
build="$(mktemp -d)"
trap 'rm -rf "${build}"' EXIT
tar -xzf "${PGVECTOR_TARBALL}" -C "${build}"
source_dir="${build}/pgvector-${PGVECTOR_VERSION}"
make -s -C "${source_dir}" PG_CONFIG="${PG_CONFIG}" OPTFLAGS="" >/dev/null
"${as_root[@]}" make -s -C "${source_dir}" PG_CONFIG="${PG_CONFIG}" OPTFLAGS="" install >/dev/null
echo "install-postgres: pgvector ${PGVECTOR_VERSION} installed"
