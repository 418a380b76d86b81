use super::*;

#[test]
fn requests_round_trip() {
    let requests = vec![
        Request::Init { library: "/tmp/p.so".into(), params: "a,b".into() },
        Request::Run { call: 7, chunk: ChunkText::new("logs/a.txt", 42, Bytes::from_static(b"x y\nz\n")) },
        Request::RunBatch {
            call: 10,
            chunks: vec![
                ChunkText::new("a", 1, Bytes::from_static(b"a\n")),
                ChunkText::new("", 2, Bytes::new()),
                ChunkText::new("b", 3, Bytes::from_static(b"c\nd\n")),
            ],
        },
        Request::RunBatch { call: 11, chunks: vec![] },
        Request::Combine { call: 8, partials: vec![Bytes::from_static(b"\x01"), Bytes::new()] },
        Request::Aggregate { call: 9, input_files: 2, partials: vec![] },
    ];
    let mut wire = Vec::new();
    for r in &requests {
        r.write_to(&mut wire).unwrap();
    }
    let mut input = &wire[..];
    for r in &requests {
        assert_eq!(Request::read_from(&mut input).unwrap().as_ref(), Some(r));
    }
    assert_eq!(Request::read_from(&mut input).unwrap(), None);
}

#[test]
fn staged_partials_travel_as_an_aggregate() {
    let mut staged = StagedPartials::create(&std::env::temp_dir()).unwrap();
    staged.append([&b"\x01\x02"[..], b"", b"abc"]).unwrap();
    staged.append([&b"z"[..]]).unwrap();
    let mut wire = Vec::new();
    Request::AggregateStaged { call: 4, input_files: 3, partials: staged }.write_to(&mut wire).unwrap();
    let partials = ["\x01\x02", "", "abc", "z"].map(|p| Bytes::copy_from_slice(p.as_bytes())).to_vec();
    assert_eq!(
        Request::read_from(&mut &wire[..]).unwrap(),
        Some(Request::Aggregate { call: 4, input_files: 3, partials })
    );
}

#[test]
fn an_aggregates_partials_are_read_one_at_a_time_and_the_next_request_after_them() {
    let partials = vec![Bytes::from_static(b"\x01\x02"), Bytes::new(), Bytes::from_static(b"abc")];
    let next = Request::Run { call: 6, chunk: ChunkText::new("f", 1, Bytes::from_static(b"x\n")) };
    let mut wire = Vec::new();
    Request::Aggregate { call: 5, input_files: 7, partials: partials.clone() }.write_to(&mut wire).unwrap();
    next.write_to(&mut wire).unwrap();
    let mut input = &wire[..];
    let Some(Incoming::Aggregate { call: 5, input_files: 7, partials: mut on_pipe }) =
        Request::read_incoming(&mut input).unwrap()
    else {
        panic!("an aggregate's head")
    };
    assert_eq!(on_pipe.count(), 3);
    for partial in &partials {
        assert_eq!(on_pipe.next(&mut input).unwrap().as_deref(), Some(&partial[..]));
    }
    assert_eq!(on_pipe.next(&mut input).unwrap(), None);
    assert_eq!(Request::read_incoming(&mut input).unwrap(), Some(Incoming::Whole(next)));

    // A partial announced longer than its frame is an error, not a read past it.
    let mut wire = Vec::new();
    Request::Aggregate { call: 5, input_files: 1, partials }.write_to(&mut wire).unwrap();
    wire[8 + 1 + 24..8 + 1 + 32].copy_from_slice(&1000u64.to_le_bytes());
    let Some(Incoming::Aggregate { partials: mut on_pipe, .. }) = Request::read_incoming(&mut &wire[..]).unwrap()
    else {
        panic!("an aggregate's head")
    };
    assert!(on_pipe.next(&mut &wire[8 + 1 + 24..]).is_err());
}

#[test]
fn responses_round_trip() {
    let responses = vec![
        Response::Ready { api_version: "0.1.0".into(), combines: true, line_numbers: false },
        Response::Ready { api_version: "0.1.0".into(), combines: false, line_numbers: true },
        Response::StartFailed { kind: StartFailure::Incompatible, message: "old".into() },
        Response::Done { call: 1, bytes: Bytes::from_static(b"{}") },
        Response::Piece { call: 3, bytes: Bytes::from_static(b"[1,") },
        Response::Failed { call: 2, message: "boom".into() },
        Response::Refused { call: 3, message: "no".into() },
        Response::Started { call: 4, slot: 1 },
    ];
    let mut wire = Vec::new();
    for r in &responses {
        r.write_to(&mut wire).unwrap();
    }
    let mut input = &wire[..];
    for r in &responses {
        assert_eq!(Response::read_from(&mut input).unwrap().as_ref(), Some(r));
    }
}

#[test]
fn truncated_and_garbage_frames_are_errors() {
    let mut wire = Vec::new();
    Request::Run { call: 1, chunk: ChunkText::new("f", 1, Bytes::from_static(b"abc")) }.write_to(&mut wire).unwrap();
    assert!(Request::read_from(&mut &wire[..wire.len() - 1]).is_err());
    assert!(Request::read_from(&mut &[255u8; 16][..]).is_err());
    let mut wire = Vec::new();
    let chunks = vec![ChunkText::new("f", 1, Bytes::from_static(b"abc"))];
    Request::RunBatch { call: 1, chunks }.write_to(&mut wire).unwrap();
    wire[8 + 1 + 8..8 + 1 + 16].copy_from_slice(&1000u64.to_le_bytes());
    assert!(Request::read_from(&mut &wire[..]).is_err(), "a count beyond the frame");
}
