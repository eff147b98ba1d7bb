"""pytest imports keepers' plugin (entry point pytest11) into every session wherever keepers is
installed: it must cost a session nothing until a test asks for `keepers_devnet`."""

import subprocess
import sys


def test_importing_the_plugin_imports_nothing_of_the_harness():
    probe = (
        "import sys, pytest; before = set(sys.modules); import keepers.testing.plugin; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert sorted(out.stdout.split()) == ["keepers", "keepers.testing", "keepers.testing.plugin"]


def test_the_harness_is_there_when_asked_for():
    import keepers.testing as testing
    from keepers.sdk import testing as sdk_testing
    from keepers.testing.devnet import Devnet

    assert testing.Devnet is Devnet
    assert sdk_testing.Devnet is Devnet
