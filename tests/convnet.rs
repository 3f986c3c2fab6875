//! Convolutional VAEs (issue 11's `--preset conv`): PyTorch's state-dict names and 4-D shapes
//! (what `load_state_dict(strict=True)` needs), the checkpoint round trip, training that lowers
//! the test loss, and configurations that cannot work refused with the reason. The kernels and
//! backward rules themselves are checked in `conv.rs`.

mod common;
use common::*;
use wgvae::data::sprites::sprites;
use wgvae::train::{TrainOptions, Trainer};
use wgvae::vae::convnet::ConvLayer;
use wgvae::vae::{ConvNet, ModelKind, Vae, VaeConfig};
use wgvae::Error;

fn layer(channels: usize, stride: usize, output_padding: usize) -> ConvLayer {
    ConvLayer { channels, kernel: 3, stride, padding: 1, output_padding }
}

/// A small conv model for 28x28 (fast enough for a test epoch on lavapipe).
fn tiny() -> VaeConfig {
    let net = ConvNet {
        image: [1, 28, 28],
        encoder: vec![layer(4, 2, 0)],
        decoder_start: [4, 7, 7],
        decoder: vec![layer(4, 2, 1), layer(1, 2, 1)],
    };
    VaeConfig { latent: 6, conv: Some(net), ..VaeConfig::conv() }
}

#[test]
fn the_conv_preset_has_pytorchs_names_and_shapes() {
    let want: Vec<(&str, Vec<usize>)> = vec![
        ("encoder.0.weight", vec![32, 1, 3, 3]),
        ("encoder.0.bias", vec![32]),
        ("encoder.2.weight", vec![64, 32, 3, 3]),
        ("encoder.2.bias", vec![64]),
        ("fc_mu.weight", vec![20, 3136]),
        ("fc_mu.bias", vec![20]),
        ("fc_logvar.weight", vec![20, 3136]),
        ("fc_logvar.bias", vec![20]),
        ("decoder_input.weight", vec![1568, 20]),
        ("decoder_input.bias", vec![1568]),
        ("decoder.0.weight", vec![32, 64, 3, 3]),
        ("decoder.0.bias", vec![64]),
        ("decoder.2.weight", vec![64, 32, 3, 3]),
        ("decoder.2.bias", vec![32]),
        ("decoder.4.weight", vec![32, 1, 3, 3]),
        ("decoder.4.bias", vec![1]),
    ];
    let got = VaeConfig::conv().state_shapes().unwrap();
    let got: Vec<(&str, Vec<usize>)> = got.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    assert_eq!(got, want, "the checkpoint layout of `--preset conv`");
    // The built model's state dict holds the same tensors (the stacked posterior head writes
    // both weights before both biases; a file is keyed by name, so order is immaterial).
    let vae = Vae::new(gpu(), VaeConfig::conv(), 1).unwrap();
    let sd = wgvae::checkpoint::state_dict(gpu(), &vae).unwrap();
    let mut sd: Vec<(&str, Vec<usize>)> = sd.iter().map(|(n, s, _)| (n.as_str(), s.clone())).collect();
    let mut sorted = want.clone();
    sd.sort();
    sorted.sort();
    assert_eq!(sd, sorted, "the state dict of a built conv model");
    assert_eq!(
        VaeConfig::conv().param_count().unwrap(),
        want.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum::<u64>()
    );
}

#[test]
fn a_conv_checkpoint_reloads_to_the_same_model() {
    let dir = std::env::temp_dir().join(format!("wgvae-convnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("conv.safetensors");
    let vae = Vae::new(gpu(), tiny(), 3).unwrap();
    wgvae::checkpoint::save(&path, gpu(), &vae, None, &Default::default()).unwrap();
    let back = wgvae::checkpoint::Checkpoint::load(&path).unwrap().vae(gpu()).unwrap();
    assert_eq!(back.config, vae.config, "config");
    let z: Vec<f32> = (0..3 * 6).map(|i| (i as f32 * 0.37).sin()).collect();
    let (a, b) = (vae.decode_values(gpu(), &z).unwrap(), back.decode_values(gpu(), &z).unwrap());
    assert_eq!(a, b, "decoded images after the round trip");
    let x = sprites(0).test.examples(3);
    assert_eq!(vae.encode_values(gpu(), &x).unwrap(), back.encode_values(gpu(), &x).unwrap(), "posteriors");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_a_conv_vae_lowers_the_test_loss() {
    let split = sprites(0);
    let opts = TrainOptions { batch: 64, lr: 3e-3, ..Default::default() };
    let mut t = Trainer::new(gpu(), tiny(), opts, &split).unwrap();
    let before = t.evaluate(&t.test).unwrap().loss;
    t.train_epoch(&mut |_| {}).unwrap();
    let after = t.evaluate(&t.test).unwrap().loss;
    assert!(after.is_finite() && after < 0.5 * before, "test loss {before:.2} -> {after:.2} after one epoch");
}

#[test]
fn impossible_conv_configs_are_refused_with_the_reason() {
    let check = |c: VaeConfig, what: &str, needle: &str| {
        let e = c.validate().expect_err(what);
        assert!(matches!(e, Error::InvalidArgument { .. }), "{what}: {e:?}");
        assert!(e.to_string().contains(needle), "{what}: `{e}` should mention `{needle}`");
    };
    check(VaeConfig { hidden: vec![100], ..VaeConfig::conv() }, "hidden layers", "hidden");
    check(VaeConfig { input_dim: 100, ..VaeConfig::conv() }, "image of another size", "100");
    check(VaeConfig { model: ModelKind::Cvae, classes: 4, ..VaeConfig::conv() }, "conditional", "conditional");
    let mut net = ConvNet::preset_conv();
    net.decoder[2].stride = 2; // ends at 55x55
    check(VaeConfig { conv: Some(net), ..VaeConfig::conv() }, "decoder ending elsewhere", "the decoder ends");
    let mut net = ConvNet::preset_conv();
    net.decoder[0].output_padding = 2;
    check(VaeConfig { conv: Some(net), ..VaeConfig::conv() }, "output padding past the stride", "output_padding");
}

/// The model's encoder and decoder against an f64 forward pass written from the architecture's
/// description (PyTorch's semantics) over the model's own state dict: layer order, activations
/// (none after the last transposed convolution), the flatten and the reshape.
#[test]
fn encode_and_decode_match_an_f64_forward_of_the_state_dict() {
    use wgvae::ops::conv::{ConvShape, ConvTransposeShape};
    let config = tiny();
    let vae = Vae::new(gpu(), config.clone(), 5).unwrap();
    let sd = wgvae::checkpoint::state_dict(gpu(), &vae).unwrap();
    let get = |name: &str, r: usize| -> Mat {
        let (_, _, v) = sd.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("{name}"));
        Mat::new(r, v.len() / r, v.iter().map(|&x| x as f64).collect())
    };
    let relu = |m: &Mat| m.map(|v| v.max(0.0));
    let dense = |x: &Mat, w: &Mat, b: &Mat| add_row(&matmul(x, w, false, true), b);
    // Encoder: conv(1->4, s2) + ReLU, flatten, fc_mu.
    let x = Mat::new(3, 784, sprites(0).test.examples(3).into_iter().map(f64::from).collect());
    let e = ConvShape { in_channels: 1, out_channels: 4, height: 28, width: 28, kernel: 3, stride: 2, padding: 1 };
    let h = relu(&add_channel_bias(&conv2d_ref(&x, &get("encoder.0.weight", 4), &e), &get("encoder.0.bias", 1)));
    let mu = dense(&h, &get("fc_mu.weight", 6), &get("fc_mu.bias", 1));
    let (got_mu, _) = vae.encode_values(gpu(), &x.f32s()).unwrap();
    assert_close(&Mat::new(3, 6, got_mu.into_iter().map(f64::from).collect()), &mu, 1e-4, 1e-4, "posterior mean");
    // Decoder: decoder_input + ReLU, reshape 4x7x7, convT(4->4, s2, op1) + ReLU, convT(4->1, s2, op1), sigmoid.
    let z = Mat::rand(3, 6, -2.0, 2.0, 7);
    let d = relu(&dense(&z, &get("decoder_input.weight", 196), &get("decoder_input.bias", 1)));
    let t0 = ConvTransposeShape {
        in_channels: 4,
        out_channels: 4,
        height: 7,
        width: 7,
        kernel: 3,
        stride: 2,
        padding: 1,
        output_padding: 1,
    };
    let t1 = ConvTransposeShape { in_channels: 4, out_channels: 1, height: 14, width: 14, ..t0 };
    let d = relu(&add_channel_bias(
        &conv2d_input_grad_ref(&d, &get("decoder.0.weight", 4), &t0.as_conv()),
        &get("decoder.0.bias", 1),
    ));
    let logits = add_channel_bias(
        &conv2d_input_grad_ref(&d, &get("decoder.2.weight", 4), &t1.as_conv()),
        &get("decoder.2.bias", 1),
    );
    let want = logits.map(|v| 1.0 / (1.0 + (-v).exp()));
    let got = vae.decode_values(gpu(), &z.f32s()).unwrap();
    assert_close(&Mat::new(3, 784, got.into_iter().map(f64::from).collect()), &want, 1e-5, 1e-4, "decoded pixels");
}
