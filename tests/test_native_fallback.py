"""Without soap_kernels._C the package still works on its torch paths and warns exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_missing_extension_warns_once_and_soap_still_steps():
    code = textwrap.dedent(
        """
        import sys, warnings

        class BlockNative:
            def find_spec(self, name, path=None, target=None):
                if name == "soap_kernels._C":
                    raise ImportError("blocked by the test")

        sys.meta_path.insert(0, BlockNative())
        import torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from soap_kernels import SOAP
            from soap_kernels._native import has_native_cpu
            p = torch.nn.Parameter(torch.randn(4, 4))
            optimizer = SOAP([p], precondition_frequency=2)
            before = p.detach().clone()
            for _ in range(4):
                p.grad = torch.randn(4, 4)
                optimizer.step()
            has_native_cpu()
        messages = [str(w.message) for w in caught if "native extension" in str(w.message)]
        assert len(messages) == 1, messages
        assert "unavailable" in messages[0]
        assert not torch.equal(before, p.detach())
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
