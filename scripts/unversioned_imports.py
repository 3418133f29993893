"""Fail when a wheel's shared object imports a system symbol without a symbol version.

Usage: python scripts/unversioned_imports.py WHEEL  (needs pyelftools, which auditwheel brings)

auditwheel derives a wheel's glibc floor from the versions of its imported symbols, so it does
not see an import that has none: one the linked glibc stubs lack (cmake/GlibcFloor.cmake), such
as __isoc23_strtol from glibc 2.38+ headers or __libc_single_threaded (2.32+), which then fails
at import on an older system. Python's own API (Py*, _Py*) is unversioned by design, and a weak
import that is absent resolves to null; both are allowed.
"""

import sys
import zipfile
from io import BytesIO

from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerSymSection

PYTHON_API_PREFIXES = ("Py", "_Py")


def unversioned_imports(elf: ELFFile) -> list[str]:
    """Names of the strong undefined dynamic symbols without a version, Python's API aside."""
    symbols = elf.get_section_by_name(".dynsym")
    versions = next((s for s in elf.iter_sections() if isinstance(s, GNUVerSymSection)), None)
    found = []
    for index, symbol in enumerate(symbols.iter_symbols()):
        name = symbol.name
        if not name or symbol["st_shndx"] != "SHN_UNDEF" or symbol["st_info"]["bind"] == "STB_WEAK":
            continue
        if name.startswith(PYTHON_API_PREFIXES):
            continue
        # Index 0 (local) or 1 (global): no version needed; 2 and up name a required version.
        version = versions.get_symbol(index)["ndx"] if versions is not None else "VER_NDX_GLOBAL"
        if version in ("VER_NDX_LOCAL", "VER_NDX_GLOBAL"):
            found.append(name)
    return found


def main(wheel: str) -> int:
    failed = False
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if not member.endswith(".so") and ".so." not in member:
                continue
            names = unversioned_imports(ELFFile(BytesIO(archive.read(member))))
            if names:
                failed = True
                print(
                    f"{wheel}: {member} imports symbols without a version (missing from the "
                    f"glibc it was linked for?): {', '.join(sorted(names))}",
                    file=sys.stderr,
                )
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
