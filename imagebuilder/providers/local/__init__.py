"""The local provider: sandboxed customization, deprovision, disk capture, QEMU boot checks, local gallery."""
