fn main() {
    afl::fuzz!(|data: &[u8]| sluice_fuzz::config(data));
}
