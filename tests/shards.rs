//! Datasets larger than one storage binding: `GpuImages` holds them in shards of whole images
//! and gathers a batch with one dispatch per shard. Forced small shards (7 images each, image
//! sizes that do and do not fill whole u32 words, u8 and f32 pixels) gather the same batches,
//! bit for bit, as one buffer does, binarized draws included, and match the CPU's pixels.

mod common;
use common::*;
use wgvae::data::gpu::GpuImages;
use wgvae::data::Images;
use wgvae::ops::vae::Noise;
use wgvae::Tape;

fn gather(g: &GpuImages, order: &[u32], offset: usize, b: usize, binarize: Option<Noise>) -> (Vec<f32>, usize) {
    let mut tape = Tape::no_grad(gpu());
    let o = wgvae::Tensor::from_u32(gpu(), 1, order.len(), order).unwrap();
    let x = g.batch(&mut tape, &o, offset, b, binarize).unwrap();
    let dispatches = tape.pending_dispatches();
    tape.submit().unwrap();
    (x.to_vec(gpu()).unwrap(), dispatches)
}

#[test]
fn sharded_batches_equal_one_buffer_bit_for_bit() {
    let n = 100;
    // A fixed shuffle of the images.
    let order: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 11) % n as u32).collect();
    for dim in [25usize, 16] {
        let bytes: Vec<u8> = (0..n * dim).map(|i| ((i * 7 + i / dim) % 256) as u8).collect();
        let f32s: Vec<f32> = bytes.iter().map(|&b| b as f32 / 255.0).collect();
        for images in [Images::from_u8(bytes.clone(), n, &[dim]).unwrap(), Images::from_f32(f32s, n, &[dim]).unwrap()] {
            let per = if matches!(images.pixels(), wgvae::data::Pixels::F32(_)) { 4 * dim } else { dim };
            let whole = GpuImages::upload(gpu(), &images).unwrap();
            let sharded = GpuImages::upload_sharded(gpu(), &images, (7 * per + 3) as u64).unwrap();
            assert_eq!((whole.shards(), sharded.shards()), (1, 15), "100 images, 7 per shard");
            let (a, da) = gather(&whole, &order, 10, 33, None);
            let (b, db) = gather(&sharded, &order, 10, 33, None);
            assert_eq!((da, db), (1, 15), "one gather per shard");
            assert_eq!(a, b, "dim {dim}: sharded batch");
            let want: Vec<f32> = order[10..43].iter().flat_map(|&i| images.example(i as usize)).collect();
            assert_eq!(b, want, "dim {dim}: the CPU's pixels");
            let noise = Noise { seed: 5, step: 3, stream: 2 };
            let (a, _) = gather(&whole, &order, 60, 40, Some(noise));
            let (b, _) = gather(&sharded, &order, 60, 40, Some(noise));
            assert_eq!(a, b, "dim {dim}: binarized draws");
            assert!(b.iter().all(|&v| v == 0.0 || v == 1.0));
        }
    }
}
