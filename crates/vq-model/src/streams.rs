//! Work on the rows of a batch in independent streams, one CPU thread each: what sampling and
//! decoding on a CPU use, because many small products keep LibTorch's own threads poorly busy
//! while whole independent passes keep every core busy (docs/experiments.md).

use tch::{TchError, Tensor};

/// The contiguous shares of rows `0..n` that `streams` streams take, as `(start, len)`: each
/// `⌈n / streams⌉` rows but the last, none empty (fewer shares than streams when `n` is small).
pub fn shares(n: i64, streams: usize) -> Vec<(i64, i64)> {
    let streams = (streams.max(1) as i64).min(n.max(1));
    let share = (n + streams - 1) / streams;
    (0..streams)
        .map(|s| ((s * share).min(n), ((s + 1) * share).min(n)))
        .filter(|(start, end)| end > start)
        .map(|(start, end)| (start, end - start))
        .collect()
}

/// Runs `work` once per share of `n` rows ([`shares`]), each on a thread of its own without
/// gradients, and concatenates the results in row order. `input(start, len)` makes a share's
/// input on the calling thread (tensors cannot be shared between threads, only moved); `work`
/// typically copies the model into a `VarStore` of its own first. LibTorch's thread count is 1
/// meanwhile, so streams do not compete for cores, and is restored after (after a panic too).
/// No rows: `work` runs once, on the calling thread, on the empty share `(0, 0)`.
pub fn in_streams<T: Send>(
    n: i64,
    streams: usize,
    mut input: impl FnMut(i64, i64) -> T,
    work: impl Fn(T) -> Result<Tensor, TchError> + Sync,
) -> Result<Tensor, TchError> {
    if n < 1 {
        let _guard = tch::no_grad_guard();
        return work(input(0, 0));
    }
    let inputs: Vec<T> = shares(n, streams)
        .into_iter()
        .map(|(start, len)| input(start, len))
        .collect();
    let _threads = OneThread::new();
    let work = &work;
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .into_iter()
            .map(|mine| {
                scope.spawn(move || {
                    let _guard = tch::no_grad_guard();
                    work(mine)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a stream panicked"))
            .collect::<Result<Vec<Tensor>, TchError>>()
    });
    Ok(Tensor::cat(&parts?, 0))
}

/// LibTorch's thread count set to 1 until dropped, then restored.
struct OneThread(i32);

impl OneThread {
    fn new() -> Self {
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        OneThread(threads)
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn shares_cover_the_rows_in_order_and_none_is_empty() {
        assert_eq!(shares(10, 2), [(0, 5), (5, 5)]);
        assert_eq!(shares(7, 3), [(0, 3), (3, 3), (6, 1)]);
        assert_eq!(shares(5, 4), [(0, 2), (2, 2), (4, 1)]);
        assert_eq!(shares(2, 8), [(0, 1), (1, 1)]);
        assert_eq!(shares(3, 0), [(0, 3)]);
        assert!(shares(0, 2).is_empty());
    }

    #[test]
    fn streams_give_each_share_its_rows_and_restore_the_thread_count() {
        // The thread count is global: held one test at a time, as the generator is.
        let _rng = crate::seeded(0);
        let x = Tensor::arange(7, (Kind::Float, Device::Cpu)).view([7, 1]);
        // A count other than 1, so that restoring it shows.
        let outside = tch::get_num_threads();
        tch::set_num_threads(3);
        let before = tch::get_num_threads();
        assert_eq!(before, 3);
        let y = in_streams(
            7,
            3,
            |start, len| x.narrow(0, start, len).shallow_clone(),
            |rows| {
                assert_eq!(tch::get_num_threads(), 1);
                Ok(rows * 2.0)
            },
        )
        .unwrap();
        assert_eq!(y, &x * 2.0);
        assert_eq!(tch::get_num_threads(), before);
        // An error of one stream is the result.
        let err = in_streams(
            4,
            2,
            |start, _| start,
            |start| {
                if start == 2 {
                    Err(TchError::Kind("second stream".into()))
                } else {
                    Ok(Tensor::zeros([2], (Kind::Float, Device::Cpu)))
                }
            },
        );
        assert!(err.unwrap_err().to_string().contains("second stream"));
        assert_eq!(tch::get_num_threads(), before);
        // No rows: one empty share on the calling thread.
        let none = in_streams(
            0,
            2,
            |start, len| (start, len),
            |share| {
                assert_eq!(share, (0, 0));
                Ok(Tensor::zeros([0, 1], (Kind::Float, Device::Cpu)))
            },
        )
        .unwrap();
        assert_eq!(none.size(), vec![0, 1]);
        tch::set_num_threads(outside);
    }
}
