//! Wall-clock time that works natively and in a browser tab (where `std::time::Instant` is not
//! available).

/// A point in time to measure elapsed seconds from.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    #[cfg(not(target_arch = "wasm32"))]
    start: std::time::Instant,
    #[cfg(target_arch = "wasm32")]
    start_ms: f64,
}

impl Clock {
    /// Now.
    pub fn now() -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        return Clock { start: std::time::Instant::now() };
        #[cfg(target_arch = "wasm32")]
        return Clock { start_ms: js_sys::Date::now() };
    }

    /// Seconds since [`Clock::now`].
    pub fn elapsed(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        return self.start.elapsed().as_secs_f64();
        #[cfg(target_arch = "wasm32")]
        return (js_sys::Date::now() - self.start_ms) / 1e3;
    }
}
