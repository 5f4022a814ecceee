//! The pseudo-random byte stream the test guest's network check sends and expects
//! (tools/guest/init_net.c): a 64-bit xorshift state, stepped once per 8 bytes, each state written
//! little-endian.

/// A stream from `seed` (the guest sends stream 1 and expects stream 2).
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
    block: [u8; 8],
    used: usize,
}

impl Stream {
    /// The stream that starts from `seed` (not 0).
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            block: [0; 8],
            used: 8,
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    ///
    /// ```
    /// use kvmkit_integration_tests::stream::Stream;
    /// let (mut a, mut b) = (Stream::new(1), Stream::new(1));
    /// let mut whole = [0u8; 20];
    /// a.fill(&mut whole);
    /// let mut parts = [0u8; 20];
    /// b.fill(&mut parts[..3]);
    /// b.fill(&mut parts[3..]);
    /// assert_eq!(whole, parts);
    /// assert_eq!(whole[..8], 0x0000_0000_4082_2041u64.to_le_bytes());
    /// ```
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                let mut x = self.state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.state = x;
                self.block = x.to_le_bytes();
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }
}
