"""pytest imports the workshop's plugin (entry point pytest11 of keepers-workshop) into every
session wherever the workshop is installed: it must cost a session nothing until a test asks for
`keepers_devnet`."""

import subprocess
import sys


def test_importing_the_plugin_imports_nothing_of_the_harness():
    probe = (
        "import sys, pytest; before = set(sys.modules); import keepers_workshop.testing.plugin; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert sorted(out.stdout.split()) == [
        "keepers_workshop",
        "keepers_workshop.testing",
        "keepers_workshop.testing.plugin",
    ]


def test_the_harness_is_there_when_asked_for():
    import keepers_workshop.testing as testing
    from keepers.sdk import testing as sdk_testing
    from keepers_workshop.testing.devnet import Devnet

    assert testing.Devnet is Devnet
    assert sdk_testing.Devnet is Devnet
