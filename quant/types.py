"""Every tensor type llamashare reads and writes, registered by importing their modules.

Use :func:`llamashare.quant.qtype.lookup` / ``by_ggml`` to find one; this module only makes sure
each class has been defined.
"""

from llamashare.quant import float_types, k_types, legacy_types  # noqa: F401
