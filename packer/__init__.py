"""liveinit's host side: everything that runs on the build machine."""
