//! Convolutional VAEs (issue 11's `--preset conv`): PyTorch's state-dict names and 4-D shapes
//! (what `load_state_dict(strict=True)` needs), the checkpoint round trip, training that lowers
//! the test loss, and configurations that cannot work refused with the reason. The kernels and
//! backward rules themselves are checked in `conv.rs`.

mod common;
use common::*;
use wgvae::data::sprites::sprites;
use wgvae::data::Split;
use wgvae::ops::Act;
use wgvae::train::{TrainOptions, Trainer};
use wgvae::vae::convnet::ConvLayer;
use wgvae::vae::{ConvNet, ModelKind, Vae, VaeConfig};
use wgvae::Error;

/// `config` after one epoch on the sprites (batch 64, lr 3e-3), which must halve the test loss.
fn trained_on_sprites(config: VaeConfig) -> Trainer {
    let split = sprites(0);
    let opts = TrainOptions { batch: 64, lr: 3e-3, ..Default::default() };
    let mut t = Trainer::new(gpu(), config, opts, &split).unwrap();
    let before = t.evaluate(&t.test).unwrap().loss;
    t.train_epoch(&mut |_| {}).unwrap();
    let after = t.evaluate(&t.test).unwrap().loss;
    assert!(after.is_finite() && after < 0.5 * before, "test loss {before:.2} -> {after:.2} after one epoch");
    t
}

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
        batch_norm: false,
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
    trained_on_sprites(tiny());
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

#[test]
fn the_conv64_preset_has_the_celeba_layout() {
    let c = VaeConfig::conv64();
    let shapes = c.state_shapes().unwrap();
    let get = |n: &str| shapes.iter().find(|(name, _)| name == n).map(|(_, s)| s.clone());
    for (name, want) in [
        ("encoder.0.0.weight", Some(vec![32, 3, 3, 3])),
        ("encoder.0.0.bias", Some(vec![32])),
        ("encoder.0.1.weight", Some(vec![32])),
        ("encoder.0.1.bias", Some(vec![32])),
        ("encoder.0.1.running_mean", Some(vec![32])),
        ("encoder.0.1.running_var", Some(vec![32])),
        ("encoder.4.0.weight", Some(vec![512, 256, 3, 3])),
        ("encoder.4.1.running_var", Some(vec![512])),
        ("fc_mu.weight", Some(vec![128, 2048])),
        ("fc_logvar.weight", Some(vec![128, 2048])),
        ("decoder_input.weight", Some(vec![2048, 128])),
        ("decoder.0.0.weight", Some(vec![512, 256, 3, 3])),
        ("decoder.0.1.weight", Some(vec![256])),
        ("decoder.3.0.weight", Some(vec![64, 32, 3, 3])),
        ("decoder.4.0.weight", Some(vec![32, 32, 3, 3])),
        ("decoder.4.1.running_mean", Some(vec![32])),
        ("decoder.5.0.weight", Some(vec![32, 3, 3, 3])),
        ("decoder.5.0.bias", Some(vec![3])),
        ("decoder.5.1.weight", None),
        ("encoder.0.weight", None),
    ] {
        assert_eq!(get(name), want, "{name}");
    }
    // 5 encoder blocks and 5 decoder blocks of 6 tensors, the output layer, 2 heads, decoder_input.
    assert_eq!(shapes.len(), 5 * 6 + 4 + 2 + 5 * 6 + 2);
    let net = c.conv.as_ref().unwrap();
    assert_eq!((net.image, net.decoder_start, net.batch_norm), ([3, 64, 64], [512, 2, 2], true));
    assert_eq!((c.latent, c.activation), (128, Act::LeakyRelu(0.01)));
    // The built model holds exactly these tensors, and its trained count leaves out the statistics.
    let vae = Vae::new(gpu(), c.clone(), 1).unwrap();
    let sd = wgvae::checkpoint::state_dict(gpu(), &vae).unwrap();
    let mut got: Vec<(String, Vec<usize>)> = sd.into_iter().map(|(n, s, _)| (n, s)).collect();
    let mut want = shapes.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the state dict of a built conv64 model");
    let trained: usize = shapes
        .iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(c.param_count().unwrap(), trained as u64);
}

#[test]
fn from_channels_mirrors_the_image_size() {
    for (image, kernel) in [([3, 64, 64], 3), ([1, 28, 28], 3), ([1, 28, 28], 4), ([3, 13, 13], 5), ([2, 16, 24], 4)] {
        let net = ConvNet::from_channels(image, &[8, 16, 32], kernel, true)
            .unwrap_or_else(|e| panic!("{image:?} kernel {kernel}: {e}"));
        net.validate().unwrap(); // the decoder ends at the image
        assert_eq!(net.decoder.len(), 4, "three up-samplings and the output layer");
        let last = net.decoder.last().unwrap();
        assert_eq!((last.stride, last.channels), (1, image[0]));
        let ups: Vec<usize> = net.decoder.iter().map(|l| l.channels).collect();
        assert_eq!(ups, vec![16, 8, 8, image[0]], "the encoder's channels in reverse, then the image's");
    }
    // 13 rows come back from 2 with output padding 1, 11 columns with 0: one padding cannot do both.
    let e = ConvNet::from_channels([3, 13, 11], &[8, 16, 32], 5, true).unwrap_err();
    assert!(e.to_string().contains("cannot mirror"), "{e}");
    let e = ConvNet::from_channels([1, 28, 28], &[], 3, true).unwrap_err();
    assert!(e.to_string().contains("channel"), "{e}");
    let e = ConvNet::from_channels([1, 28, 28], &[8], 1, true).unwrap_err();
    assert!(e.to_string().contains("kernel"), "{e}");
}

/// A batch-norm conv model on sprites: one epoch lowers the test loss; evaluation uses the
/// running statistics (an example's code does not depend on the rest of its batch), the encoder
/// matches an f64 forward of the state dict (conv -> batch norm with the running statistics ->
/// LeakyReLU), and a checkpoint brings the statistics back.
#[test]
fn a_batch_norm_conv_vae_trains_and_evaluates_with_running_statistics() {
    let net = ConvNet::from_channels([1, 28, 28], &[4, 8], 3, true).unwrap();
    let config = VaeConfig { latent: 6, activation: Act::LeakyRelu(0.01), conv: Some(net), ..VaeConfig::conv() };
    let t = trained_on_sprites(config);
    let split = sprites(0);

    let vae = &t.vae;
    let x = split.test.examples(3);
    let (mu3, _) = vae.encode_values(gpu(), &x).unwrap();
    let (mu1, _) = vae.encode_values(gpu(), &x[..784]).unwrap();
    assert_eq!(mu1[..6], mu3[..6], "evaluation must not use the batch's statistics");

    let sd = wgvae::checkpoint::state_dict(gpu(), vae).unwrap();
    let get = |name: &str, r: usize| -> Mat {
        let (_, _, v) = sd.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("{name}"));
        Mat::new(r, v.len() / r, v.iter().map(|&x| x as f64).collect())
    };
    let rm = get("encoder.0.1.running_mean", 1);
    assert!(rm.d.iter().any(|&m| m.abs() > 1e-3), "the running mean moved: {:?}", rm.d);
    let leaky = |v: f64| if v > 0.0 { v } else { 0.01 * v };
    let block = |x: &Mat, i: usize, shape: wgvae::ops::conv::ConvShape| -> Mat {
        let conv = add_channel_bias(
            &conv2d_ref(x, &get(&format!("encoder.{i}.0.weight"), shape.out_channels), &shape),
            &get(&format!("encoder.{i}.0.bias"), 1),
        );
        let bn = |n: &str| get(&format!("encoder.{i}.1.{n}"), 1);
        let (g, b, m, v) = (bn("weight"), bn("bias"), bn("running_mean"), bn("running_var"));
        let hw = conv.c / shape.out_channels;
        Mat::new(
            conv.r,
            conv.c,
            (0..conv.r * conv.c)
                .map(|k| {
                    let ch = (k % conv.c) / hw;
                    leaky(g.d[ch] * (conv.d[k] - m.d[ch]) / (v.d[ch] + 1e-5).sqrt() + b.d[ch])
                })
                .collect(),
        )
    };
    let shapes = vae.config.conv.as_ref().unwrap().encoder_shapes().unwrap();
    let xm = Mat::new(3, 784, x.iter().map(|&v| v as f64).collect());
    let h = block(&block(&xm, 0, shapes[0]), 1, shapes[1]);
    let mu = add_row(&matmul(&h, &get("fc_mu.weight", 6), false, true), &get("fc_mu.bias", 1));
    assert_close(&Mat::new(3, 6, mu3.iter().map(|&v| v as f64).collect()), &mu, 1e-4, 1e-4, "posterior mean");

    let dir = std::env::temp_dir().join(format!("wgvae-convnet-bn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bn.safetensors");
    wgvae::checkpoint::save(&path, gpu(), vae, None, &Default::default()).unwrap();
    let back = wgvae::checkpoint::Checkpoint::load(&path).unwrap().vae(gpu()).unwrap();
    assert_eq!(back.encode_values(gpu(), &x).unwrap().0, mu3, "posterior means after the round trip");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Colour end to end: a small batch-norm model trains on the built-in 64x64 shapes (a slice of
/// them) and writes RGB pictures whose top row of reconstructions.png is the test images.
#[test]
fn colour_images_train_and_make_colour_pictures() {
    let all = wgvae::data::shapes::shapes(0);
    let split = Split { name: "shapes".into(), train: all.train.head(256), test: all.test.head(16) };
    let net = ConvNet::from_channels([3, 64, 64], &[4, 8], 3, true).unwrap();
    let config = VaeConfig {
        input_dim: 3 * 64 * 64,
        latent: 8,
        activation: Act::LeakyRelu(0.01),
        conv: Some(net),
        ..VaeConfig::conv()
    };
    let opts = TrainOptions { batch: 64, lr: 3e-3, ..Default::default() };
    let mut t = Trainer::new(gpu(), config, opts, &split).unwrap();
    let before = t.evaluate(&t.test).unwrap().loss;
    t.train_epoch(&mut |_| {}).unwrap();
    let after = t.evaluate(&t.test).unwrap().loss;
    assert!(after.is_finite() && after < before, "test loss {before:.2} -> {after:.2}");

    let dir = std::env::temp_dir().join(format!("wgvae-colour-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (sp, rp) = wgvae::pictures::write_pictures(&dir, gpu(), &t.vae, &split.test, 1).unwrap();
    let read = |p: &std::path::Path| {
        let mut r = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap())).read_info().unwrap();
        let mut px = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut px).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb, "{}", p.display());
        (info.width as usize, info.height as usize, px)
    };
    let (w, h, _) = read(&sp);
    assert_eq!((w, h), (8 * 66 + 2, 8 * 66 + 2), "8x8 samples of 64x64 with 2-pixel borders");
    let (w, h, px) = read(&rp);
    assert_eq!((w, h), (8 * 66 + 2, 2 * 66 + 2));
    // The top row is the test images: channel k of pixel (y, x) of image i at plane k of the row.
    let mut worst = 0i32;
    for i in 0..8 {
        let img = split.test.example(i);
        for k in 0..3 {
            for y in 0..64 {
                for x in 0..64 {
                    let want = (img[(k * 64 + y) * 64 + x] * 255.0).round() as i32;
                    let got = px[((2 + y) * w + 2 + i * 66 + x) * 3 + k] as i32;
                    worst = worst.max((got - want).abs());
                }
            }
        }
    }
    assert!(worst <= 1, "the test images in reconstructions.png differ by {worst} levels");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `wgvae train --preset conv64 / --channels / --kernel` build, and the data conv64 picks.
#[test]
fn run_specs_build_conv_models_for_the_data() {
    use wgvae::run::{Preset, RunSpec};
    let spec = |preset: Option<Preset>, channels: Option<Vec<usize>>, kernel: Option<usize>| RunSpec {
        preset,
        channels,
        kernel,
        ..Default::default()
    };
    assert_eq!(spec(Some(Preset::Conv64), None, None).config(&[3, 64, 64], 0).unwrap(), VaeConfig::conv64());
    // On 28x28 grey images the same stack, fitted: 28-14-7-4-2-1.
    let c = spec(Some(Preset::Conv64), None, None).config(&[28, 28], 0).unwrap();
    let net = c.conv.unwrap();
    assert_eq!((net.image, net.decoder_start, net.batch_norm), ([1, 28, 28], [512, 1, 1], true));
    // --channels alone: batch norm, the rest of the classic defaults.
    let c = spec(None, Some(vec![16, 32]), Some(4)).config(&[1, 28, 28], 0).unwrap();
    let net = c.conv.unwrap();
    assert_eq!((net.encoder_channels(), net.encoder[0].kernel, net.batch_norm), (vec![16, 32], 4, true));
    assert_eq!((c.latent, c.activation, c.hidden.len()), (20, Act::Relu, 0));
    // --preset conv keeps its network's lack of batch norm.
    let net = spec(Some(Preset::Conv), Some(vec![8, 16]), None).config(&[1, 28, 28], 0).unwrap().conv.unwrap();
    assert!(!net.batch_norm);
    let e = spec(None, Some(vec![8]), None).config(&[784], 0).unwrap_err();
    assert!(e.to_string().contains("needs images"), "{e}");

    // conv64 without --data trains on the built-in 64x64 colour shapes.
    let out = std::env::temp_dir().join(format!("wgvae-conv64-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let s = RunSpec { out: Some(out.clone()), channels: Some(vec![4]), ..spec(Some(Preset::Conv64), None, None) };
    let run = s.prepare(|| Ok(gpu().clone())).unwrap();
    assert_eq!((run.split.name.as_str(), run.split.train.shape()), ("shapes", &[3usize, 64, 64][..]));
    assert_eq!(run.fit.epochs, 5);
    assert!(run.describe().contains("(batch norm)"), "{}", run.describe());
    let _ = std::fs::remove_dir_all(&out);
}

/// The conditional conv VAE takes the one-hot label at its dense layers: fc_mu / fc_logvar read
/// [flattened features | y], decoder_input reads [z | y]. It trains on the sprites' shapes, and the
/// label changes what the decoder draws.
#[test]
fn a_conditional_conv_vae_conditions_at_the_dense_layers() {
    let config = VaeConfig { model: ModelKind::Cvae, classes: 4, ..tiny() };
    let shapes = config.state_shapes().unwrap();
    let get = |n: &str| shapes.iter().find(|(name, _)| name == n).map(|(_, s)| s.clone()).unwrap();
    assert_eq!(get("encoder.0.weight"), vec![4, 1, 3, 3], "the image alone enters the convolutions");
    assert_eq!(get("fc_mu.weight"), vec![6, 4 * 14 * 14 + 4]);
    assert_eq!(get("fc_logvar.weight"), vec![6, 4 * 14 * 14 + 4]);
    assert_eq!(get("decoder_input.weight"), vec![4 * 7 * 7, 6 + 4]);
    let t = trained_on_sprites(config);
    // The same z decoded as a square and as a heart.
    let z = wgvae::Tensor::zeros(gpu(), 1, 6).unwrap();
    let draw = |label: usize| {
        let y = wgvae::data::gpu::onehot_rows(gpu(), &[label], 4).unwrap();
        t.vae.decode_cond(gpu(), &z, Some(&y)).unwrap().to_vec(gpu()).unwrap()
    };
    let (a, b) = (draw(0), draw(3));
    let diff: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(diff > 0.01, "the label should change the drawing (mean difference {diff})");
}
