"""Entry script of the self-contained build (PyInstaller): the `sidecar` command itself."""

from sidecar.cli import main

main()
