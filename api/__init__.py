"""HTTP adapters: the ARM resource provider Microsoft.VirtualMachineImages, one blueprint per module.

`templates` (list, get, PUT, PATCH, DELETE), `runs` (run, cancel, runOutputs, and the `runs` extension),
`triggers`, `async_operations` (what `Azure-AsyncOperation`/`Location` point at), `operations` (the RP's
catalog); `_arm` holds the ARM plumbing and `_builds` the one place that starts, cancels and settles the
`build_image` orchestration. Long-running operations: a PUT answers 201/200 with `Azure-AsyncOperation`;
DELETE, run and cancel answer 202 with `Azure-AsyncOperation` and `Location`; run and cancel operations
complete when the build ends.
"""
