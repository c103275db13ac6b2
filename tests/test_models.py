import torch

from poisonsift.models import DEFAULT_HIDDEN_LAYER, SmallInception, count_parameters


def test_parameter_count_about_1_1_million():
    n = count_parameters(SmallInception())
    assert 1_050_000 < n < 1_150_000
    assert n == 1_108_795


def test_output_shape_and_named_layers():
    m = SmallInception(num_classes=43).eval()
    assert m(torch.zeros(3, 3, 32, 32)).shape == (3, 43)
    names = dict(m.named_modules())
    assert DEFAULT_HIDDEN_LAYER in names and "inception.branch5x5_2.conv" in names
    assert names["fc2"].out_features == 128


def test_inception_concatenates_to_256_channels():
    m = SmallInception()
    assert m.inception(torch.zeros(1, 3, 32, 32)).shape == (1, 256, 32, 32)
