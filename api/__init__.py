"""HTTP adapters: the ARM resource provider Microsoft.VirtualMachineImages, one blueprint per module."""
