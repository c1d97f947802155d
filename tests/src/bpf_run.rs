//! Programs run by the kernel on crafted packets (BPF_PROG_TEST_RUN).

use aya::programs::{TestRun, TestRunOptions, TestRunResult};

/// Runs `program` on `frame`: its verdict and the packet it leaves.
pub fn run<P>(program: &mut P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("test run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}
