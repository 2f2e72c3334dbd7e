"""Batch normalisation folded into convolutions: the same predictions with fewer layers, and only where
the fold is exact."""
import keras
import numpy as np

from strokeseg.infer.batchnorm_folding import fold_batch_norm, foldable_pairs
from strokeseg.models import build_model


def randomized_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    """Trained-looking batch-normalisation weights (a new model has the identity map)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.3, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.2, 3.0, variance.shape)])
    return model


def test_a_folded_raxnet_predicts_what_the_model_predicts():
    model = randomized_statistics(build_model("raxnet", (48, 64, 1), width=0.125))
    pairs = foldable_pairs(model)
    kinds = {type(model.get_layer(conv)).__name__ for conv in pairs.values()}
    assert kinds == {"Conv2D", "SeparableConv2D", "Conv2DTranspose"}
    assert len(pairs) == sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    x = np.random.default_rng(1).uniform(0, 255, (4, 48, 64, 1)).astype(np.float32)
    # float32 rounding through 27 folded layers (seen up to 2.4e-5 with these statistics); a mask
    # changes only where a probability lies within that of 0.5
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), rtol=0, atol=1e-4)
    assert model.get_layer(next(iter(pairs))).__class__ is keras.layers.BatchNormalization   # original kept


def _normalised(convolution: keras.layers.Layer, share: bool = False) -> keras.Model:
    image = keras.Input((16, 16, 2))
    features = convolution(image)
    out = keras.layers.BatchNormalization(name="bn")(features)
    if share:                                  # the convolution's output is read twice
        out = keras.layers.Add()([out, features])
    return randomized_statistics(keras.Model(image, out), seed=3)


def test_only_exact_folds_are_made():
    x = np.random.default_rng(2).normal(0, 1, (2, 16, 16, 2)).astype(np.float32)
    for convolution, share, folds in ((keras.layers.Conv2D(3, 3, padding="same"), False, True),
                                      (keras.layers.Conv2D(3, 3, padding="same", activation="relu"), False, False),
                                      (keras.layers.Conv2D(3, 3, padding="same", use_bias=False), False, False),
                                      (keras.layers.Conv2D(2, 3, padding="same"), True, False)):
        model = _normalised(convolution, share)
        assert bool(foldable_pairs(model)) is folds
        folded = fold_batch_norm(model)
        assert (folded is model) is not folds
        np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), rtol=0, atol=1e-5)
    image = keras.Input((16, 16, 2))              # normalisation of the input: nothing to fold into
    plain = keras.Model(image, keras.layers.BatchNormalization()(image))
    assert fold_batch_norm(plain) is plain
