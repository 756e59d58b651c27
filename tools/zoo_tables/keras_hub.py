"""The KerasHub table: every family and preset kerastl registers, and how its facts are measured.

Every KerasHub preset kerastl registers is listed here with the constructor
kwargs of its backbone class, so that ``weights=None`` builds the real
architecture offline (no preset config download). :func:`family_table` builds
each architecture with random weights and measures what the registry records:
parameter count, feature width, pyramid taps (layer, channels, stride) and
layer groups (the family's ``group_rule`` applied to the built backbone). For
text backbones it also checks the measured parameter count against the
KerasHub preset metadata, which proves the stored config right.

Image CNN configs come from KerasHub's own timm converters
(``keras_hub.src.utils.timm.convert_*.convert_backbone_config``); transformer
configs are the published sizes of each checkpoint.

``tools/write_zoo_tables.py`` writes the result to ``kerastl/zoo/tables/keras_hub.json``
(minutes; the largest architectures, over ``MAX_PARAMS``, are not built and keep
the KerasHub metadata parameter count).
"""

from __future__ import annotations

import importlib

import keras
import numpy as np

#: Architectures whose KerasHub metadata counts more parameters are not built (a family
#: may raise it with ``max_params``: ViT-Huge and DeBERTaV3-Large are built).
MAX_PARAMS = 4e8
IMAGENET = {  # timm / torchvision ImageNet mean and std, as an ImageConverter's scale/offset
    "scale": [1 / (0.229 * 255), 1 / (0.224 * 255), 1 / (0.225 * 255)],
    "offset": [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
}
INCEPTION = {"scale": 1 / 127.5, "offset": -1.0}


def timm(module: str, arch: str, **cfg):
    conv = importlib.import_module(f"keras_hub.src.utils.timm.{module}")
    return conv.convert_backbone_config({"architecture": arch, **cfg})


def bert(v, L, H, A, max_len=512, vocab_key="vocabulary_size"):
    return dict(
        {vocab_key: v},
        num_layers=L,
        num_heads=A,
        hidden_dim=H,
        intermediate_dim=4 * H,
        max_sequence_length=max_len,
    )


def vit(size, patch, L, H, A, mlp):
    return dict(
        image_shape=(size, size, 3),
        patch_size=patch,
        num_layers=L,
        num_heads=A,
        hidden_dim=H,
        mlp_dim=mlp,
    )


def deit(size, L, H, A):
    return dict(
        image_shape=(size, size, 3),
        patch_size=16,
        num_layers=L,
        num_heads=A,
        hidden_dim=H,
        intermediate_dim=4 * H,
    )


def dino(L, H, A, registers=0, swiglu=False, inter=None):
    return dict(
        patch_size=14,
        num_layers=L,
        hidden_dim=H,
        num_heads=A,
        intermediate_dim=inter or 4 * H,
        layer_scale_init_value=1.0,
        num_register_tokens=registers,
        use_swiglu_ffn=swiglu,
        image_shape=(224, 224, 3),
        position_embedding_shape=(518, 518, 3),
    )


def swin(size, window, C, depths, heads):
    return dict(
        image_shape=(size, size, 3),
        embed_dim=C,
        depths=depths,
        num_heads=heads,
        window_size=window,
        patch_size=4,
    )


def mit(hidden, depths):
    return dict(
        layerwise_depths=depths,
        num_layers=4,
        layerwise_num_heads=[1, 2, 5, 8],
        layerwise_sr_ratios=[8, 4, 2, 1],
        max_drop_path_rate=0.1,
        layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2],
        hidden_dims=hidden,
    )


def whisper(v, L, H, A):
    return dict(
        vocabulary_size=v,
        num_layers=L,
        num_heads=A,
        hidden_dim=H,
        intermediate_dim=4 * H,
        num_mels=80,
        max_encoder_sequence_length=3000,
        max_decoder_sequence_length=448,
    )


def moonshine(H, L, A=8):
    return dict(
        vocabulary_size=32768,
        filter_dim=H,
        encoder_num_layers=L,
        decoder_num_layers=L,
        hidden_dim=H,
        intermediate_dim=4 * H,
        encoder_num_heads=A,
        decoder_num_heads=A,
        feedforward_expansion_factor=4,
        encoder_use_swiglu_activation=False,
        decoder_use_swiglu_activation=True,
        max_position_embeddings=194,
        partial_rotary_factor=0.62,
    )


RES_VD = dict(
    input_conv_filters=[32, 32, 64],
    input_conv_kernel_sizes=[3, 3, 3],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_strides=[1, 2, 2, 2],
)
XCEPTION_41 = dict(
    stackwise_conv_filters=[[32, 64], [128, 128], [256, 256], [728, 728]]
    + [[728, 728, 728]] * 8
    + [[728, 1024], [1536, 2048]],
    stackwise_pooling=[False, True, True, True] + [False] * 8 + [True, False],
)
MIT_B = {
    0: ([32, 64, 160, 256], [2, 2, 2, 2]),
    1: ([64, 128, 320, 512], [2, 2, 2, 2]),
    2: ([64, 128, 320, 512], [3, 4, 6, 3]),
    3: ([64, 128, 320, 512], [3, 4, 18, 3]),
    4: ([64, 128, 320, 512], [3, 8, 27, 3]),
    5: ([64, 128, 320, 512], [3, 6, 40, 3]),
}


def _image(
    cls,
    converter,
    groups,
    tiny,
    presets,
    license="Apache-2.0",
    min_size=32,
    fixed_size=False,
    description="",
    max_params=MAX_PARAMS,
):
    return dict(
        modality="image",
        backbone_class=cls,
        converter=converter,
        groups=groups,
        tiny=tiny,
        presets=presets,
        license=license,
        min_input_size=min_size,
        fixed_size=fixed_size,
        description=description,
        max_params=max_params,
    )


def _text(
    cls,
    tokenizer,
    preprocessor,
    groups,
    tiny,
    presets,
    license="Apache-2.0",
    description="",
    max_params=MAX_PARAMS,
):
    return dict(
        modality="text",
        backbone_class=cls,
        tokenizer=tokenizer,
        preprocessor=preprocessor,
        groups=groups,
        tiny=tiny,
        presets=presets,
        license=license,
        description=description,
        max_params=max_params,
    )


VK = "vocab_size"  # ElectraBackbone's name for the vocabulary size
STACK_GROUPS = dict(first="stem", block=r"^stack(\d+)_", name="stage{}", last=None)
TEXT_GROUPS = dict(
    first="embeddings", block=r"^transformer_layer_(\d+)$", name="layer_{}", last="pooler"
)
TINY_TEXT = dict(
    num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=64
)

FAMILIES = {
    "resnet": _image(
        "ResNetBackbone",
        IMAGENET,
        STACK_GROUPS,
        dict(stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_filters=[64, 16, 16, 16]),
        {
            "resnet_18_imagenet": (timm("convert_resnet", "resnet18"), 224),
            "resnet_50_imagenet": (timm("convert_resnet", "resnet50"), 224),
            "resnet_101_imagenet": (timm("convert_resnet", "resnet101"), 224),
            "resnet_152_imagenet": (timm("convert_resnet", "resnet152"), 224),
            "resnet_v2_50_imagenet": (timm("convert_resnet", "resnetv2_50"), 224),
            "resnet_v2_101_imagenet": (timm("convert_resnet", "resnetv2_101"), 224),
            "resnet_vd_18_imagenet": (
                dict(RES_VD, stackwise_num_blocks=[2, 2, 2, 2], block_type="basic_block_vd"),
                224,
            ),
            "resnet_vd_34_imagenet": (
                dict(RES_VD, stackwise_num_blocks=[3, 4, 6, 3], block_type="basic_block_vd"),
                224,
            ),
            "resnet_vd_50_imagenet": (
                dict(RES_VD, stackwise_num_blocks=[3, 4, 6, 3], block_type="bottleneck_block_vd"),
                224,
            ),
            "resnet_vd_101_imagenet": (
                dict(RES_VD, stackwise_num_blocks=[3, 4, 23, 3], block_type="bottleneck_block_vd"),
                224,
            ),
            "resnet_vd_152_imagenet": (
                dict(RES_VD, stackwise_num_blocks=[3, 8, 36, 3], block_type="bottleneck_block_vd"),
                224,
            ),
            "resnet_vd_200_imagenet": (
                dict(RES_VD, stackwise_num_blocks=[3, 12, 48, 3], block_type="bottleneck_block_vd"),
                224,
            ),
        },
        description="ResNet (He et al. 2016) and ResNet-vd, KerasHub ports of timm weights",
    ),
    "efficientnet": _image(
        "EfficientNetBackbone",
        IMAGENET,
        dict(first="stem", block=r"^block(\d+)[a-z]_", name="stage{}", last="top"),
        dict(
            stackwise_num_repeats=[1, 1, 1, 1, 1, 1, 1],
            stackwise_width_coefficients=[0.25] * 7,
        ),
        {
            "efficientnet_b0_ra_imagenet": (timm("convert_efficientnet", "efficientnet_b0"), 224),
            "efficientnet_b1_ft_imagenet": (timm("convert_efficientnet", "efficientnet_b1"), 240),
            "efficientnet_b2_ra_imagenet": (timm("convert_efficientnet", "efficientnet_b2"), 256),
            "efficientnet_b3_ra2_imagenet": (timm("convert_efficientnet", "efficientnet_b3"), 288),
            "efficientnet_b4_ra2_imagenet": (timm("convert_efficientnet", "efficientnet_b4"), 320),
            "efficientnet_b5_sw_imagenet": (timm("convert_efficientnet", "efficientnet_b5"), 416),
            "efficientnet_lite0_ra_imagenet": (
                timm("convert_efficientnet", "efficientnet_lite0"),
                224,
            ),
            "efficientnet_el_ra_imagenet": (timm("convert_efficientnet", "efficientnet_el"), 300),
            "efficientnet_em_ra2_imagenet": (timm("convert_efficientnet", "efficientnet_em"), 240),
            "efficientnet_es_ra_imagenet": (timm("convert_efficientnet", "efficientnet_es"), 224),
            "efficientnet2_rw_t_ra2_imagenet": (
                timm("convert_efficientnet", "efficientnetv2_rw_t"),
                224,
            ),
            "efficientnet2_rw_s_ra2_imagenet": (
                timm("convert_efficientnet", "efficientnetv2_rw_s"),
                288,
            ),
            "efficientnet2_rw_m_agc_imagenet": (
                timm("convert_efficientnet", "efficientnetv2_rw_m"),
                320,
            ),
        },
        description="EfficientNet (Tan and Le 2019), KerasHub ports of timm weights",
    ),
    "mobilenet": _image(
        "MobileNetBackbone",
        IMAGENET,
        dict(first="stem", block=r"^block_(\d+)_", name="stage{}", last="head"),
        None,
        {
            "mobilenet_v3_small_050_imagenet": (
                timm("convert_mobilenet", "mobilenetv3_small_050"),
                224,
            ),
            "mobilenet_v3_small_100_imagenet": (
                timm("convert_mobilenet", "mobilenetv3_small_100"),
                224,
            ),
            "mobilenet_v3_large_100_imagenet": (
                timm("convert_mobilenet", "mobilenetv3_large_100"),
                224,
            ),
            "mobilenet_v3_large_100_imagenet_21k": (
                timm("convert_mobilenet", "mobilenetv3_large_100"),
                224,
            ),
        },
        description="MobileNetV3 (Howard et al. 2019), KerasHub ports of timm weights",
    ),
    "densenet": _image(
        "DenseNetBackbone",
        IMAGENET,
        dict(first="stem", block=r"^(?:stack|transition)(\d+)_", name="stage{}", last="head"),
        dict(stackwise_num_repeats=[1, 1, 1, 1], growth_rate=8),
        {
            "densenet_121_imagenet": (timm("convert_densenet", "densenet121"), 224),
            "densenet_169_imagenet": (timm("convert_densenet", "densenet169"), 224),
            "densenet_201_imagenet": (timm("convert_densenet", "densenet201"), 224),
        },
        description="DenseNet (Huang et al. 2017), KerasHub ports of timm weights",
    ),
    "vgg": _image(
        "VGGBackbone",
        IMAGENET,
        dict(first="input", block=r"^block(\d+)_", name="stage{}", last=None),
        dict(stackwise_num_repeats=[1, 1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16, 16]),
        {
            "vgg_11_imagenet": (timm("convert_vgg", "vgg11"), 224),
            "vgg_13_imagenet": (timm("convert_vgg", "vgg13"), 224),
            "vgg_16_imagenet": (timm("convert_vgg", "vgg16"), 224),
            "vgg_19_imagenet": (timm("convert_vgg", "vgg19"), 224),
        },
        description="VGG (Simonyan and Zisserman 2014), KerasHub ports of timm weights",
    ),
    "xception": _image(
        "XceptionBackbone",
        INCEPTION,
        dict(first="input", block=r"^block(\d+)_", name="block{}", last=None),
        dict(
            stackwise_conv_filters=[[8, 16], [24, 24], [32, 32]],
            stackwise_pooling=[False, True, True],
        ),
        {"xception_41_imagenet": (XCEPTION_41, 299)},
        license="Apache-2.0 (weights: see KerasHub model card)",
        min_size=71,
        description="Xception (Chollet 2017)",
    ),
    "cspnet": _image(
        "CSPNetBackbone",
        IMAGENET,
        dict(first="stem", block=r"^stage_(\d+)_", name="stage{}", last=None),
        dict(stackwise_depth=[1, 1, 1, 1], stackwise_num_filters=[64, 64, 128, 128]),
        {
            "csp_darknet_53_ra_imagenet": (timm("convert_cspnet", "cspdarknet53"), 256),
            "csp_resnext_50_ra_imagenet": (timm("convert_cspnet", "cspresnext50"), 256),
            "csp_resnet_50_ra_imagenet": (timm("convert_cspnet", "cspresnet50"), 256),
            "darknet_53_imagenet": (timm("convert_cspnet", "darknet53"), 256),
        },
        description="CSPNet (Wang et al. 2019), KerasHub ports of timm weights",
    ),
    "hgnetv2": _image(
        "HGNetV2Backbone",
        IMAGENET,
        dict(
            first="stem",
            block=r"^encoder_stage_(\d+)$",
            expand=("encoder",),
            name="stage{}",
            last=None,
        ),
        dict(
            depths=[1, 1, 1, 1],
            hidden_sizes=[16, 32, 32, 64],
            embedding_size=8,
            stem_channels=[3, 8, 8],
            stackwise_stage_filters=[
                [8, 8, 16, 1, 1, 3],
                [16, 8, 32, 1, 1, 3],
                [32, 8, 32, 1, 1, 5],
                [32, 8, 64, 1, 1, 5],
            ],
        ),
        {
            f"hgnetv2_{b}_{tag}": (
                timm("convert_hgnetv2", f"hgnetv2_{b}", pretrained_cfg={"tag": "ssld"}),
                224,
            )
            for b, tag in (
                ("b4", "ssld_stage2_ft_in1k"),
                ("b5", "ssld_stage1_in22k_in1k"),
                ("b5", "ssld_stage2_ft_in1k"),
                ("b6", "ssld_stage1_in22k_in1k"),
                ("b6", "ssld_stage2_ft_in1k"),
            )
        },
        description="PP-HGNetV2 (PaddlePaddle), KerasHub ports of timm weights",
    ),
    "mit": _image(
        "MiTBackbone",
        IMAGENET,
        dict(
            first="stem",
            block=r"^(?:patch_and_embed|hierarchical_encoder|output_level)_(\d+)",
            name="stage{}",
            last=None,
        ),
        dict(layerwise_depths=[1, 1, 1, 1], hidden_dims=[8, 16, 40, 64]),
        {
            f"mit_b{b}_{data}": (mit(*MIT_B[b]), size)
            for b in range(6)
            for data, size in (("ade20k_512", 512), ("cityscapes_1024", 1024))
            if (b, data) != (5, "ade20k_512")
        }
        | {"mit_b5_ade20k_640": (mit(*MIT_B[5]), 640)},
        min_size=64,
        description="Mix Transformer, the SegFormer encoder (Xie et al. 2021)",
    ),
    "vit": _image(
        "ViTBackbone",
        INCEPTION,
        dict(
            first="embeddings",
            expand=("vit_encoder",),
            block=r"^transformer_block_(\d+)$",
            name="layer_{}",
            last="norm",
        ),
        dict(num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, patch_size=8),
        {
            "vit_base_patch16_224_imagenet": (vit(224, 16, 12, 768, 12, 3072), 224),
            "vit_base_patch16_384_imagenet": (vit(384, 16, 12, 768, 12, 3072), 384),
            "vit_large_patch16_224_imagenet": (vit(224, 16, 24, 1024, 16, 4096), 224),
            "vit_large_patch16_384_imagenet": (vit(384, 16, 24, 1024, 16, 4096), 384),
            "vit_base_patch32_384_imagenet": (vit(384, 32, 12, 768, 12, 3072), 384),
            "vit_large_patch32_384_imagenet": (vit(384, 32, 24, 1024, 16, 4096), 384),
            "vit_base_patch16_224_imagenet21k": (vit(224, 16, 12, 768, 12, 3072), 224),
            "vit_base_patch32_224_imagenet21k": (vit(224, 32, 12, 768, 12, 3072), 224),
            "vit_huge_patch14_224_imagenet21k": (vit(224, 14, 32, 1280, 16, 5120), 224),
            "vit_large_patch16_224_imagenet21k": (vit(224, 16, 24, 1024, 16, 4096), 224),
            "vit_large_patch32_224_imagenet21k": (vit(224, 32, 24, 1024, 16, 4096), 224),
        },
        fixed_size=True,
        description="Vision Transformer (Dosovitskiy et al. 2021)",
        max_params=7e8,
    ),
    "deit": _image(
        "DeiTBackbone",
        IMAGENET,
        dict(
            first="embeddings",
            expand=("deit_encoder",),
            block=r"^transformer_block_(\d+)$",
            name="layer_{}",
            last="norm",
        ),
        dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, patch_size=8),
        {
            "deit_base_distilled_patch16_384_imagenet": (deit(384, 12, 768, 12), 384),
            "deit_base_distilled_patch16_224_imagenet": (deit(224, 12, 768, 12), 224),
            "deit_tiny_distilled_patch16_224_imagenet": (deit(224, 12, 192, 3), 224),
            "deit_small_distilled_patch16_224_imagenet": (deit(224, 12, 384, 6), 224),
        },
        fixed_size=True,
        description="DeiT, data-efficient distilled ViT (Touvron et al. 2021)",
    ),
    "swin": _image(
        "SwinTransformerBackbone",
        IMAGENET,
        dict(first="stem", block=r"^stage_(\d+)$", name="stage{}", last="norm"),
        dict(embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4),
        {
            "swin_tiny_patch4_window7_224": (swin(224, 7, 96, [2, 2, 6, 2], [3, 6, 12, 24]), 224),
            "swin_small_patch4_window7_224": (swin(224, 7, 96, [2, 2, 18, 2], [3, 6, 12, 24]), 224),
            "swin_base_patch4_window7_224": (swin(224, 7, 128, [2, 2, 18, 2], [4, 8, 16, 32]), 224),
            "swin_base_patch4_window12_384": (
                swin(384, 12, 128, [2, 2, 18, 2], [4, 8, 16, 32]),
                384,
            ),
            "swin_large_patch4_window7_224": (
                swin(224, 7, 192, [2, 2, 18, 2], [6, 12, 24, 48]),
                224,
            ),
            "swin_large_patch4_window12_384": (
                swin(384, 12, 192, [2, 2, 18, 2], [6, 12, 24, 48]),
                384,
            ),
        },
        fixed_size=True,
        description="Swin Transformer (Liu et al. 2021)",
    ),
    "dinov2": _image(
        "DINOV2Backbone",
        IMAGENET,
        dict(
            first="embeddings",
            expand=("encoder",),
            block=r"^layers_(\d+)$",
            name="layer_{}",
            last="norm",
        ),
        dict(
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            position_embedding_shape=(32, 32, 3),
            patch_size=8,
        ),
        {
            "dinov2_small": (dino(12, 384, 6), 224),
            "dinov2_base": (dino(12, 768, 12), 224),
            "dinov2_large": (dino(24, 1024, 16), 224),
            "dinov2_giant": (dino(40, 1536, 24, swiglu=True, inter=4096), 224),
            "dinov2_with_registers_small": (dino(12, 384, 6, 4), 224),
            "dinov2_with_registers_base": (dino(12, 768, 12, 4), 224),
            "dinov2_with_registers_large": (dino(24, 1024, 16, 4), 224),
            "dinov2_with_registers_giant": (dino(40, 1536, 24, 4, True, 4096), 224),
        },
        min_size=28,
        description="DINOv2 self-supervised ViT (Oquab et al. 2023)",
    ),
    # -- text ------------------------------------------------------------------------------
    "bert": _text(
        "BertBackbone",
        "BertTokenizer",
        "BertTextClassifierPreprocessor",
        TEXT_GROUPS,
        TINY_TEXT,
        {
            "bert_tiny_en_uncased": bert(30522, 2, 128, 2),
            "bert_small_en_uncased": bert(30522, 4, 512, 8),
            "bert_medium_en_uncased": bert(30522, 8, 512, 8),
            "bert_base_en_uncased": bert(30522, 12, 768, 12),
            "bert_base_en": bert(28996, 12, 768, 12),
            "bert_base_zh": bert(21128, 12, 768, 12),
            "bert_base_multi": bert(119547, 12, 768, 12),
            "bert_large_en_uncased": bert(30522, 24, 1024, 16),
            "bert_large_en": bert(28996, 24, 1024, 16),
            "bert_tiny_en_uncased_sst2": bert(30522, 2, 128, 2),
            "all_minilm_l6_v2_en": bert(30522, 6, 384, 12),
            "all_minilm_l6_v1_en": bert(30522, 6, 384, 12),
            "all_minilm_l12_v2_en": bert(30522, 12, 384, 12),
            "paraphrase_minilm_l6_v2_en": bert(30522, 6, 384, 12),
            "paraphrase_minilm_l12_v2_en": bert(30522, 12, 384, 12),
            "multi_qa_minilm_l6_cos_v1_en": bert(30522, 6, 384, 12),
            "multi_qa_minilm_l6_dot_v1_en": bert(30522, 6, 384, 12),
            "msmarco_minilm_l6_cos_v5_en": bert(30522, 6, 384, 12),
            "msmarco_minilm_l12_cos_v5_en": bert(30522, 12, 384, 12),
            "bge_small_en": bert(30522, 12, 384, 12),
            "bge_base_en": bert(30522, 12, 768, 12),
            "bge_large_en": bert(30522, 24, 1024, 16),
            "bge_small_v1.5_en": bert(30522, 12, 384, 12),
            "bge_base_v1.5_en": bert(30522, 12, 768, 12),
            "bge_large_v1.5_en": bert(30522, 24, 1024, 16),
            "bge_base_zh": bert(21128, 12, 768, 12),
            "bge_large_zh": bert(21128, 24, 1024, 16),
            "bge_small_v1.5_zh": bert(21128, 4, 512, 8),
            "bge_base_v1.5_zh": bert(21128, 12, 768, 12),
            "bge_large_v1.5_zh": bert(21128, 24, 1024, 16),
            "bge_llm_embedder": bert(30522, 12, 768, 12),
        },
        description="BERT (Devlin et al. 2019) and BERT-architecture sentence encoders",
    ),
    "distil_bert": _text(
        "DistilBertBackbone",
        "DistilBertTokenizer",
        "DistilBertTextClassifierPreprocessor",
        dict(TEXT_GROUPS, last=None),
        TINY_TEXT,
        {
            "distil_bert_base_en_uncased": bert(30522, 6, 768, 12),
            "distil_bert_base_en": bert(28996, 6, 768, 12),
            "distil_bert_base_multi": bert(119547, 6, 768, 12),
        },
        description="DistilBERT (Sanh et al. 2019)",
    ),
    "roberta": _text(
        "RobertaBackbone",
        "RobertaTokenizer",
        "RobertaTextClassifierPreprocessor",
        dict(TEXT_GROUPS, last=None),
        TINY_TEXT,
        {
            "roberta_base_en": bert(50265, 12, 768, 12),
            "roberta_large_en": bert(50265, 24, 1024, 16),
        },
        license="MIT",
        description="RoBERTa (Liu et al. 2019)",
    ),
    "deberta_v3": _text(
        "DebertaV3Backbone",
        "DebertaV3Tokenizer",
        "DebertaV3TextClassifierPreprocessor",
        dict(TEXT_GROUPS, block=r"^disentangled_attention_encoder_layer_(\d+)$", last=None),
        dict(TINY_TEXT, bucket_size=16),
        {
            "deberta_v3_extra_small_en": bert(128100, 12, 384, 6),
            "deberta_v3_small_en": bert(128100, 6, 768, 12),
            "deberta_v3_base_en": bert(128100, 12, 768, 12),
            "deberta_v3_large_en": bert(128100, 24, 1024, 16),
            "deberta_v3_base_multi": bert(251000, 12, 768, 12),
        },
        license="MIT",
        description="DeBERTaV3 (He et al. 2021)",
        max_params=5e8,
    ),
    "albert": _text(
        "AlbertBackbone",
        "AlbertTokenizer",
        "AlbertTextClassifierPreprocessor",
        dict(TEXT_GROUPS, block=r"^group_(\d+)_inner_layer_\d+$", name="group_{}"),
        dict(TINY_TEXT, embedding_dim=8),
        {
            "albert_base_en_uncased": dict(
                bert(30000, 12, 768, 12), embedding_dim=128, dropout=0.0
            ),
            "albert_large_en_uncased": dict(
                bert(30000, 24, 1024, 16), embedding_dim=128, dropout=0.0
            ),
            "albert_extra_large_en_uncased": dict(
                bert(30000, 24, 2048, 16), embedding_dim=128, dropout=0.0
            ),
            "albert_extra_extra_large_en_uncased": dict(
                bert(30000, 12, 4096, 64), embedding_dim=128, dropout=0.0
            ),
        },
        description="ALBERT (Lan et al. 2020); its encoder layers share one weight group",
    ),
    "electra": _text(
        "ElectraBackbone",
        "ElectraTokenizer",
        "TextClassifierPreprocessor",
        TEXT_GROUPS,
        dict(TINY_TEXT, embedding_dim=8),
        {
            "electra_small_discriminator_uncased_en": dict(
                bert(30522, 12, 256, 4, vocab_key=VK), embedding_dim=128
            ),
            "electra_small_generator_uncased_en": dict(
                bert(30522, 12, 256, 4, vocab_key=VK), embedding_dim=128
            ),
            "electra_base_discriminator_uncased_en": dict(
                bert(30522, 12, 768, 12, vocab_key=VK), embedding_dim=768
            ),
            "electra_base_generator_uncased_en": dict(
                bert(30522, 12, 256, 4, vocab_key=VK), embedding_dim=768
            ),
            "electra_large_discriminator_uncased_en": dict(
                bert(30522, 24, 1024, 16, vocab_key=VK), embedding_dim=1024
            ),
            "electra_large_generator_uncased_en": dict(
                bert(30522, 24, 256, 4, vocab_key=VK), embedding_dim=1024
            ),
        },
        description="ELECTRA (Clark et al. 2020)",
    ),
    "xlm_roberta": _text(
        "XLMRobertaBackbone",
        "XLMRobertaTokenizer",
        "XLMRobertaTextClassifierPreprocessor",
        dict(TEXT_GROUPS, last=None),
        TINY_TEXT,
        {
            "xlm_roberta_base_multi": bert(250002, 12, 768, 12),
            "xlm_roberta_large_multi": bert(250002, 24, 1024, 16),
            "bge_m3": bert(250002, 24, 1024, 16, max_len=8192),
            "multilingual_e5_base": bert(250002, 12, 768, 12),
            "multilingual_e5_large": bert(250002, 24, 1024, 16),
        },
        license="MIT",
        description="XLM-RoBERTa (Conneau et al. 2020) and multilingual encoders on it",
    ),
    # -- audio -----------------------------------------------------------------------------
    "whisper": dict(
        modality="audio",
        backbone_class="WhisperBackbone",
        audio="whisper",
        groups=dict(
            first="stem", block=r"^transformer_encoder_layer_(\d+)$", name="layer_{}", last="norm"
        ),
        tiny=dict(
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_encoder_sequence_length=100,
            max_decoder_sequence_length=8,
        ),
        presets={
            "whisper_tiny_en": whisper(51864, 4, 384, 6),
            "whisper_base_en": whisper(51864, 6, 512, 8),
            "whisper_small_en": whisper(51864, 12, 768, 12),
            "whisper_medium_en": whisper(51864, 24, 1024, 16),
            "whisper_tiny_multi": whisper(51865, 4, 384, 6),
            "whisper_base_multi": whisper(51865, 6, 512, 8),
            "whisper_small_multi": whisper(51865, 12, 768, 12),
            "whisper_medium_multi": whisper(51865, 24, 1024, 16),
            "whisper_large_multi": whisper(51865, 32, 1280, 20),
            "whisper_large_multi_v2": whisper(51865, 32, 1280, 20),
        },
        license="MIT",
        description="Whisper encoder (Radford et al. 2022); the decoder is dropped",
    ),
    "moonshine": dict(
        modality="audio",
        backbone_class="MoonshineBackbone",
        audio="moonshine",
        groups=dict(first="stem", block=r"^encoder_block_(\d+)$", name="layer_{}", last="norm"),
        tiny=dict(
            filter_dim=16,
            encoder_num_layers=2,
            decoder_num_layers=1,
            hidden_dim=16,
            intermediate_dim=32,
            encoder_num_heads=2,
            decoder_num_heads=2,
            vocabulary_size=64,
        ),
        presets={
            "moonshine_tiny_en": moonshine(288, 6),
            "moonshine_base_en": moonshine(416, 8),
        },
        license="MIT",
        description="Moonshine encoder (Useful Sensors 2024); the decoder is dropped",
    ),
}


#: Every family, in registration order.
NAMES = list(FAMILIES)
#: Family-wide facts copied to the table (``groups`` is stored as ``group_rule``).
HEAD_KEYS = (
    "modality",
    "backbone_class",
    "license",
    "description",
    "groups",
    "tiny",
    "converter",
    "tokenizer",
    "preprocessor",
    "audio",
    "min_input_size",
    "fixed_size",
)


def family_table(family: str, presets: list[str] | None = None, verbose: bool = True) -> dict:
    """The table entry of ``family``: its family-wide facts and the measured presets
    (``presets``: only those, for a quick partial check)."""
    fam = FAMILIES[family]
    out = {("group_rule" if k == "groups" else k): fam[k] for k in HEAD_KEYS if k in fam}
    out["variants"] = {}
    for preset, value in fam["presets"].items():
        if presets is not None and preset not in presets:
            continue
        config, size = value if isinstance(value, tuple) else (value, None)
        facts = measure(family, fam, preset, config, size, fam.get("max_params", MAX_PARAMS))
        out["variants"][preset] = facts
        if verbose:
            print(
                f"{family:12s} {preset:45s} {facts['params']:>12,d} {facts.get('check', '')}",
                flush=True,
            )
    return out


def measure(family, fam, preset, config, size, max_params) -> dict:
    """Build one architecture with random weights and read its facts."""
    import keras_hub  # noqa: PLC0415 - heavy

    config = {
        k: (
            list(v)
            if isinstance(v, tuple) and k not in ("image_shape", "position_embedding_shape")
            else v
        )
        for k, v in config.items()
    }
    cls = getattr(keras_hub.models, fam["backbone_class"])
    hub_params = (
        cls.presets.get(preset, {}).get("metadata", {}).get("params")
        if hasattr(cls, "presets")
        else None
    )
    facts = {"config": config}
    if fam["modality"] == "image":
        facts["input_size"] = size
    if (hub_params or 0) > max_params:
        facts.update(
            params=int(hub_params),
            feature_dim=_width(config),
            groups=[],
            taps=[],
            check="not built (too large): params from KerasHub metadata",
        )
        return facts
    facts.update(_measure_built(cls, _probe_spec(family, fam, preset, config, size), size))
    if fam["modality"] == "text" and hub_params:
        facts["check"] = (
            "== KerasHub metadata"
            if facts["params"] == hub_params
            else (f"!= KerasHub metadata {hub_params:,d}")
        )
    elif hub_params:
        facts["check"] = f"(KerasHub metadata, with task head: {hub_params:,d})"
    keras.backend.clear_session()
    return facts


def _probe_spec(family, fam, preset, config, size):
    """A provisional spec, enough for the adapter to build and group the architecture."""
    from kerastl.zoo._spec import ModelSpec

    extra = {
        "config": config,
        "group_rule": fam["groups"],
        "converter": fam.get("converter"),
        "backbone_class": fam["backbone_class"],
        "preset": preset,
        "tokenizer": fam.get("tokenizer"),
        "preprocessor": fam.get("preprocessor"),
        "audio": fam.get("audio"),
        "sample_rate": 16000,
        "max_seconds": 30,
        "max_sequence_length": config.get("max_sequence_length", 512),
        "fixed_size": fam.get("fixed_size", False),
    }
    return ModelSpec(
        preset,
        family,
        "keras_hub",
        fam["modality"],
        preset,
        size or 128,
        fam.get("min_input_size", 4),
        "keras_hub",
        0,
        0,
        extra=extra,
    )


def _measure_built(cls, spec, size) -> dict:
    """Params, feature width, groups (the rule on the built layers) and taps of ``spec``."""
    from kerastl.zoo.sources.base import get_adapter

    adapter = get_adapter(spec)
    if spec.modality == "image":
        shape = adapter.resolve_input_shape((size, size, 3))
    elif spec.modality == "text":
        shape = adapter.resolve_input_shape(None, sequence_length=16)
    else:
        shape = adapter.resolve_input_shape(None)
    backbone = adapter._wrap(_build_hub(cls, spec.extra["config"], spec.modality, shape))
    out = backbone.output
    out = out["sequence_output"] if isinstance(out, dict) else out
    groups = adapter.layer_groups(backbone)
    taps = []
    for level, tensor in adapter.pyramid(backbone):
        stride = size // tensor.shape[1] if tensor.shape[1] else None
        taps.append((level, int(tensor.shape[-1]), int(stride) if stride else 0))
    return {
        "params": int(sum(np.prod(v.shape) for v in backbone.weights)),
        "feature_dim": int(out.shape[-1]),
        "groups": [(g, layers[-1].name) for g, layers in groups.items()],
        "taps": taps,
    }


def _width(config):
    for k in ("hidden_dim", "embed_dim"):
        if k in config:
            return int(config[k]) * (8 if k == "embed_dim" else 1)
    return 0


def _build_hub(cls, config, modality, shape):
    import inspect  # noqa: PLC0415

    kwargs = dict(config)
    for k in ("image_shape", "position_embedding_shape"):
        if k in kwargs:
            kwargs[k] = tuple(kwargs[k])
    if modality == "image" and "image_shape" in inspect.signature(cls.__init__).parameters:
        kwargs["image_shape"] = tuple(shape)
    return cls(**kwargs)
