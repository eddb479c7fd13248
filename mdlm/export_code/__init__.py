"""Standalone ``transformers`` remote code for mdlm's own :class:`~mdlm.models.transformer.Transformer`.

``configuration_mdlm.py`` and ``modeling_mdlm.py`` import only ``torch`` and ``transformers`` (never
``mdlm``): :mod:`mdlm.export` copies them into every exported folder, whose ``config.json`` points at
them through ``auto_map``, so ``AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)``
works where mdlm is not installed. Parameter names equal the Transformer's, so ``model.safetensors``
also loads straight into an mdlm ``Transformer`` of the same shape.
"""

FILES = ("configuration_mdlm.py", "modeling_mdlm.py")
