"""HTTP adapters: the ARM resource provider Microsoft.VirtualMachineImages, one blueprint per module.

`templates`, `runs` (run, cancel, runOutputs, the `runs` extension), `triggers`, `async_operations` (what
`Azure-AsyncOperation`/`Location` point at), `operations`; `_arm` is the ARM plumbing, `_builds` the one
place that starts, cancels and settles `build_image`."""
