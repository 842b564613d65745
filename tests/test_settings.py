"""App settings: read from a mapping, identity-based storage, clear errors for bad values."""

from __future__ import annotations

import pytest

from imagebuilder.settings import DEV_STORAGE, Settings


def test_defaults_are_local_and_development_storage() -> None:
    s = Settings.from_env({})
    assert s.provider == "local"
    assert s.storage_connection == DEV_STORAGE
    assert s.list_page_size == 100


def test_identity_based_storage_becomes_a_secret_free_connection_string() -> None:
    s = Settings.from_env(
        {
            "AzureWebJobsStorage__accountName": "stimages",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "0000-1111",
            "AzureWebJobsStorage__blobServiceUri": "https://stimages.blob.core.windows.net",
        }
    )
    assert s.storage_connection == (
        "AccountName=stimages;Credential=managedidentity;ClientId=0000-1111;"
        "BlobEndpoint=https://stimages.blob.core.windows.net"
    )


def test_a_connection_string_wins_over_identity_settings() -> None:
    s = Settings.from_env(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "AzureWebJobsStorage__accountName": "x"}
    )
    assert s.storage_connection == "UseDevelopmentStorage=true"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"IMAGEBUILDER_PROVIDER": "gcp"}, "IMAGEBUILDER_PROVIDER"),
        ({"IMAGEBUILDER_LIST_PAGE_SIZE": "0"}, "IMAGEBUILDER_LIST_PAGE_SIZE"),
        ({"IMAGEBUILDER_LIST_PAGE_SIZE": "many"}, "IMAGEBUILDER_LIST_PAGE_SIZE"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Settings.from_env(env)


def test_timeout_scale_is_a_positive_number() -> None:
    assert Settings.from_env({}).timeout_scale == 1.0
    assert Settings.from_env({"IMAGEBUILDER_TIMEOUT_SCALE": "0.05"}).timeout_scale == 0.05
    with pytest.raises(ValueError, match="IMAGEBUILDER_TIMEOUT_SCALE"):
        Settings.from_env({"IMAGEBUILDER_TIMEOUT_SCALE": "-1"})


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("IMAGEBUILDER_AZURE_GENERALIZE_SECONDS", "an hour", "positive whole number of seconds"),
        ("IMAGEBUILDER_AZURE_GENERALIZE_SECONDS", "0", "positive whole number of seconds"),
        ("IMAGEBUILDER_AZURE_POLL_SECONDS", "1.5", "positive whole number of seconds"),
        ("IMAGEBUILDER_AZURE_CLEANUP_SECONDS", "-3", "positive number"),
        ("IMAGEBUILDER_AZURE_WRITE_INTERVAL", "fast", "0 or more"),
        ("IMAGEBUILDER_AZURE_CREDENTIAL", "msi", "'default'"),
        ("IMAGEBUILDER_ARM_ENDPOINT", "http://arm.local", "https URL"),
        ("IMAGEBUILDER_ARTIFACTS_CONTAINER", "Image_Artifacts", "blob container name"),
        ("IMAGEBUILDER_AZURE_SKIP_INVENTORY", "maybe", "true or false"),
        ("IMAGEBUILDER_DEBIAN_SECURITY_MIRROR", "deb.debian.org", "http(s) URL"),
        ("IMAGEBUILDER_UBUNTU_SECURITY_MIRROR", "ftp://security.ubuntu.com", "http(s) URL"),
    ],
)
def test_a_bad_azure_setting_names_itself_and_what_it_must_be(name: str, value: str, says: str) -> None:
    from imagebuilder.providers.azure.provider import AzureProvider
    from imagebuilder.settings import AzureSettings

    with pytest.raises(ValueError, match=name) as caught:
        AzureSettings.from_env({name: value})
    assert says in str(caught.value) and repr(value) in str(caught.value)
    with pytest.raises(ValueError, match=name):  # the provider reads its settings the same way
        AzureProvider(environ={name: value})


def test_azure_settings_defaults_and_values() -> None:
    from imagebuilder.settings import AzureSettings

    assert AzureSettings.from_env({}) == AzureSettings()
    s = AzureSettings.from_env(
        {
            "IMAGEBUILDER_AZURE_GENERALIZE_SECONDS": "900",
            "IMAGEBUILDER_AZURE_WRITE_INTERVAL": "0",
            "AZURE_CLIENT_ID": "cid",
            "IMAGEBUILDER_AZURE_CREDENTIAL": "Template",
        }
    )
    assert (s.generalize_seconds, s.write_interval, s.client_id, s.credential_mode) == (
        900,
        0.0,
        "cid",
        "template",
    )


def test_max_concurrent_builds_defaults_per_provider_and_is_checked() -> None:
    import os

    from imagebuilder.settings import AZURE_MAX_CONCURRENT_BUILDS, default_max_concurrent_builds

    cores = len(os.sched_getaffinity(0))
    local = default_max_concurrent_builds("local")
    assert 1 <= local <= cores
    assert Settings.from_env({}).max_concurrent_builds == local
    assert (
        Settings.from_env({"IMAGEBUILDER_PROVIDER": "azure"}).max_concurrent_builds
        == AZURE_MAX_CONCURRENT_BUILDS
    )
    assert Settings.from_env({"IMAGEBUILDER_MAX_CONCURRENT_BUILDS": "3"}).max_concurrent_builds == 3
    with pytest.raises(ValueError, match="IMAGEBUILDER_MAX_CONCURRENT_BUILDS='0' is not a positive whole"):
        Settings.from_env({"IMAGEBUILDER_MAX_CONCURRENT_BUILDS": "0"})


def test_local_hosts_with_their_own_state_folders_have_their_own_build_slot_pools() -> None:
    a = Settings.from_env({"IMAGEBUILDER_STATE_DIR": "/tmp/a"})
    b = Settings.from_env({"IMAGEBUILDER_STATE_DIR": "/tmp/b"})
    assert a.build_slot_pool != b.build_slot_pool
    azure = [Settings.from_env({"IMAGEBUILDER_PROVIDER": "azure", "IMAGEBUILDER_STATE_DIR": d}) for d in "ab"]
    assert azure[0].build_slot_pool == azure[1].build_slot_pool == "ImageBuilderHub|azure"
