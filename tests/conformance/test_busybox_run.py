"""ONE real-world-shaped template run end to end through the official client: the VHD quickstart
(Azure/azvmimagebuilder quickquickstarts/4_Creating_a_Custom_Linux_Image_to_VHD, with the identity
api-version 2020-02-14 requires) on the local BusyBox base; run, lastRunStatus, runOutputs as the spec
shapes them, the SDK's models holding every member, and delete after the build."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime

import pytest
import requests
from azure.mgmt.imagebuilder import models as m

from examples.sdk_client import make_client
from tests.conformance.conftest import TEMPLATES, AppRuntime

pytestmark = pytest.mark.slow

SUB = str(uuid.uuid4())
RG = "aibBusyboxRG"
NAME = "helloImageTemplateVHD"
API = "2020-02-14"


def test_quickstart_vhd_template_runs_on_busybox(app_runtime: AppRuntime, http: requests.Session) -> None:
    quickstart = json.loads((TEMPLATES / "aib-qqs4-vhd-no-identity.json").read_text())["template"]
    twin = json.loads((TEMPLATES / "aib-qqs1-linux-gallery.json").read_text())["template"]
    template = copy.deepcopy(quickstart)
    template["identity"] = twin["identity"]
    template["properties"]["source"] = {
        "type": "PlatformImage",
        "publisher": "ImageBuilderLocal",
        "offer": "busybox",
        "sku": "stable",
        "version": "latest",
    }
    template["properties"]["customize"] = [
        {"type": "Shell", "name": "RunScriptFromSource", "inline": ["sudo mkdir -p /buildArtifacts"]},
        {
            "type": "Shell",
            "name": "CheckSumCompareShellScript",
            "inline": ["echo built | sudo tee /buildArtifacts/hello"],
        },
    ]
    base = (
        f"{app_runtime.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages"
    )
    with make_client(app_runtime.url, app_runtime.key, SUB, polling_interval=0.5, api_version=API) as client:
        ops = client.virtual_machine_image_templates
        ops.begin_create_or_update(RG, NAME, m.ImageTemplate(template)).result()
        ops.begin_run(RG, NAME).result(timeout=600)

        got = ops.get(RG, NAME)
        status = got.last_run_status
        assert (status.run_state, status.run_sub_state) == (
            "Succeeded",
            None,
        ) or status.run_state == "Succeeded"
        assert isinstance(status.start_time, datetime) and isinstance(status.end_time, datetime)
        raw = http.get(f"{base}/imageTemplates/{NAME}?api-version={API}").json()
        assert got.as_dict() == raw

        outputs = list(ops.list_run_outputs(RG, NAME))
        raw_outputs = http.get(f"{base}/imageTemplates/{NAME}/runOutputs?api-version={API}").json()["value"]
        assert [o.as_dict() for o in outputs] == raw_outputs
        print(json.dumps({"lastRunStatus": raw["properties"]["lastRunStatus"], "runOutputs": raw_outputs}))
        (out,) = outputs
        assert out.name == quickstart["properties"]["distribute"][0]["runOutputName"]
        assert out.type == "Microsoft.VirtualMachineImages/imageTemplates/runOutputs"
        assert (
            out.id
            == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates/{NAME}/runOutputs/{out.name}"
        )
        assert out.properties.provisioning_state == "Succeeded" and out.properties.artifact_uri
        one = ops.get_run_output(RG, NAME, out.name)
        assert one.as_dict() == out.as_dict()

        ops.begin_delete(RG, NAME).result()
        assert http.get(f"{base}/imageTemplates/{NAME}?api-version={API}").status_code == 404
