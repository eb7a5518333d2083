//! Deterministic mutated input for the tests that feed the relay what no well-behaved client
//! sends: a small xorshift generator and byte-level mutations of valid seeds (bytes replaced,
//! inserted, cut, deleted, duplicated). Seeded, so a failure replays exactly.

/// xorshift64* (Vigna): small, fast, and good enough to pick mutations.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A generator for `seed` (any value; zero is replaced, xorshift's one fixed point).
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            state: if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            return 0;
        }
        (self.next_u64() % bound as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Noise: 1 to `max` random bytes.
    pub fn noise(&mut self, max: usize) -> Vec<u8> {
        let len = 1 + self.below(max);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// `seed` with one to four mutations, each drawing new bytes from `alphabet`.
    pub fn mutate(&mut self, seed: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut bytes = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(bytes.len() + 1);
            match self.below(6) {
                0 if at < bytes.len() => bytes[at] = *self.pick(alphabet),
                1 => bytes.insert(at, *self.pick(alphabet)),
                2 => bytes.truncate(at),
                3 => {
                    let end = (at + 1 + self.below(16)).min(bytes.len());
                    bytes.drain(at.min(end)..end);
                }
                4 => {
                    // A piece of the input repeated elsewhere (fields given twice, nesting).
                    let from = self.below(bytes.len());
                    let end = (from + 1 + self.below(24)).min(bytes.len());
                    let piece = bytes[from..end].to_vec();
                    bytes.splice(at..at, piece);
                }
                _ => {
                    let noise = self.noise(8);
                    bytes.splice(at..at, noise);
                }
            }
        }
        bytes
    }
}
