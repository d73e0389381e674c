"""A signed release, and what `verify --trust` says when someone with write access to the store swaps it.

Run it: python examples/docs_signed_release.py (needs the `sign` extra: pip install 'ckpt-store[sign]').
"""

import json
import tempfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import ckpt

work = Path(tempfile.mkdtemp())

# The publisher's key pair (in practice: `ssh-keygen -t ed25519 -f release-key`); the public half is handed to
# whoever must check the releases, out of band (a trust file in a repository, a web page, a key server).
key = ed25519.Ed25519PrivateKey.generate()
private = key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
)
(work / "release-key").write_bytes(private)
(work / "release-key.pub").write_bytes(
    key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
)

store = ckpt.init(str(work / "store"))
store.save({"w": np.ones(4, np.float32)}, model="tiny-llama", step=1, metrics={"val_loss": 0.6})
good = store.save({"w": np.full(4, 2.0, np.float32)}, step=2, metrics={"val_loss": 0.4})
signer = ckpt.ReleaseSigner.from_file(work / "release-key", name="alice@lab")
release = store.freeze(good.id, name="tiny-llama-v1", signer=signer)

report = store.verify(trust=[work / "release-key.pub"])
assert report.ok
print(report.releases[0].message)  # 'tiny-llama-v1' is 5f0c…, signed by SHA256:…

# Someone who can write the store points the release at other weights, and rewrites the reflog to match,
# so that nothing in the store contradicts the swap any more.
evil = store.save({"w": np.full(4, 666.0, np.float32)}, "side", step=3)
tag = work / "store" / "refs" / "tags" / "tiny-llama-v1"
tag.write_text(json.dumps({**json.loads(tag.read_text()), "id": evil.id}))
for entry in (work / "store" / "logs" / "refs" / "tags" / "tiny-llama-v1").iterdir():
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "new": evil.id}))

assert store.verify("tiny-llama-v1").ok  # the swapped-in snapshot is complete and consistent…
report = store.verify(trust=[work / "release-key.pub"])
assert not report.ok  # …but it is not what alice signed
for damage in report.damage:
    print(damage.kind, damage.object, damage.digest, "-", damage.message)
assert [d.kind for d in report.damage] == ["repointed"]
