fn main() {
    afl::fuzz!(|data: &[u8]| sluice_fuzz::srtp(data));
}
