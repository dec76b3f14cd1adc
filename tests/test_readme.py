"""The README's measured numbers name the exact config they were measured with.

Each "measured" paragraph of the README cites its config with a hash of the file, e.g.
``experiments/quickstart.yaml`` (sha256 ``0123456789ab``); a sweep file under ``sweeps/`` likewise.
Changing the config without re-measuring (and updating the hash next to the new numbers) fails here, so
the README never quotes figures of a config that no longer exists.
"""

import hashlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"`((?:experiments|sweeps)/[\w.-]+\.yaml)` \(sha256 `([0-9a-f]{12})`\)")
MEASURED_CONFIGS = (
    "experiments/quickstart.yaml",
    "experiments/btn_synthetic.yaml",
    "sweeps/btn_lambda.yaml",
    "experiments/resizer_synthetic.yaml",
    "experiments/biformer_synthetic.yaml",
    "experiments/routed_vit_synthetic.yaml",
    "experiments/vit_synthetic.yaml",
    "experiments/lhcnet_synthetic.yaml",
    "experiments/arbex_synthetic.yaml",
    "experiments/label_noise_synthetic.yaml",
    "sweeps/label_noise.yaml",
)


def config_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_readme_numbers_cite_the_current_configs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cited = CITATION.findall(readme)
    assert {config for config, _ in cited} >= set(MEASURED_CONFIGS), "a measured config is not cited"
    for config, digest in cited:
        assert config_digest(REPO / config) == digest, (
            f"{config} changed since the README's numbers were measured: run it again and update the "
            f"README's figures and the hash ({config_digest(REPO / config)})"
        )


def test_the_citation_pattern_catches_a_stale_hash():
    stale = "measured with `experiments/quickstart.yaml` (sha256 `000000000000`)"
    [(config, digest)] = CITATION.findall(stale)
    assert config_digest(REPO / config) != digest
