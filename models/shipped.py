"""The model package that ships with radiomics-node and the digest it is pinned by.

``crlm-recurrence-demo`` is a demonstration model trained on synthetic data, not for clinical use
(docs/model-card.md, "The shipped model"). The demo runs it; a site that wants it pins this
digest in its ``models:`` configuration like any other package.
"""

from pathlib import Path

DEMO_PACKAGE = Path(__file__).resolve().parent / "packages" / "crlm-recurrence-demo"
DEMO_SHA256 = "37d5ab0ae8156e739aa798725e0a7dc483b7a572d361bf01bf25c8e55a77fc84"
