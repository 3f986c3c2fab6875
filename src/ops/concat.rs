//! Column concatenation (`shaders/data.wgsl`): \[a | b\] for conditioning a network on a label.

use super::{grid_1d, val};
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::gpu::Words;
use crate::tape::{Params, Tape, Var};
use crate::tensor::Tensor;

fn key(words: Words, entry: &'static str, outputs: u32) -> KernelKey {
    KernelKey {
        module: Module::Data(words),
        entry,
        defines: Vec::new(),
        inputs: if outputs == 1 { 2 } else { 1 },
        outputs,
    }
}

/// out\[B, Na+Nb\] = [a\[B,Na\] | b\[B,Nb\]].  Backward: the gradient split back into its two parts.
pub fn concat_cols(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    let (av, bv) = (val(tape, a), val(tape, b));
    if av.rows() != bv.rows() {
        return Err(Error::shape(
            "concat_cols",
            format!("{:?} and {:?} have different row counts", av.shape(), bv.shape()),
        ));
    }
    let (r, na, nb) = (av.rows(), av.cols(), bv.cols());
    let out = Tensor::empty(tape.gpu(), r, na + nb)?;
    let n = out.len();
    let p = Params::new().u(n as u32).u((na + nb) as u32).u(na as u32);
    tape.dispatch(&key(tape.gpu().words(), "concat_cols", 1), p, &[&av, &bv, &out], grid_1d(n, 256))?;
    Ok(tape.record(&[a, b], out, move |t, g, _| {
        let (ga, gb) = (Tensor::empty(t.gpu(), r, na)?, Tensor::empty(t.gpu(), r, nb)?);
        t.dispatch(&key(t.gpu().words(), "split_cols", 2), p, &[g, &ga, &gb], grid_1d(n, 256))?;
        Ok(vec![Some(ga), Some(gb)])
    }))
}
