"""`aib`: the command line for image templates, after `az image builder`, plus following a run live,
resuming a failed run, stepping into a kept build root and trying one customizer.

It talks only HTTP to the ARM REST API (`client`), with the function key; endpoint and key come from
`--endpoint/--key`, AIB_ENDPOINT/AIB_KEY, or the local runtime's state directory (`config`). Two commands
work on this machine only and run the local provider's debug module in a child process: `shell`,
`cleanup` and `try` (`python -m imagebuilder.providers.local.debug`); `lint` validates offline with the
API's own template models (`imagebuilder.template`).
"""
