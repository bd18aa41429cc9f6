# SPDX-License-Identifier: MIT
"""`python3 -m annann` prints the versions; the explorer is `python3 -m annann.explore`."""
import annann

print(f"annann {annann.__version__} (libannann {annann.library_version})")
