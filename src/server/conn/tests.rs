use super::*;

fn limits() -> ConnLimits {
    ConnLimits {
        request_head_timeout: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(75),
        send_timeout: Duration::from_secs(60),
        max_cancelled_streams: 2,
        head: HeadLimits {
            max_request_head: 16384,
            max_request_headers: 100,
        },
    }
}

#[tokio::test(start_paused = true)]
async fn each_state_has_its_deadline() {
    let activity = Activity::new(false, limits(), Arc::default());
    assert_eq!(
        activity.next(),
        (30_000, Action::Close(Timeout::RequestHead))
    );
    let request = activity.request_started();
    tokio::time::advance(Duration::from_secs(100)).await;
    assert_eq!(activity.next().1, Action::Wait);
    drop(Tracked::new((), request));
    assert_eq!(
        activity.next(),
        (175_000, Action::GoAway(Timeout::Keepalive))
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    activity.bytes_arrived();
    assert_eq!(
        activity.next(),
        (131_000, Action::Close(Timeout::RequestHead))
    );

    let h2 = Activity::new(true, limits(), Arc::default());
    assert_eq!(h2.next(), (30_000, Action::GoAway(Timeout::RequestHead)));
    drop(h2.request_started());
    h2.bytes_arrived();
    assert_eq!(h2.next().1, Action::GoAway(Timeout::Keepalive));
}

#[tokio::test(start_paused = true)]
async fn an_http2_answer_waiting_for_room_is_due_at_the_send_timeout() {
    let activity = Activity::new(true, limits(), Arc::default());
    let full = http_body_util::Full::new(Bytes::from_static(b"page"));
    let mut answer = std::pin::pin!(Tracked::new(full, activity.request_started()));
    let mut next_frame = || {
        let mut answer = answer.as_mut();
        futures_util::FutureExt::now_or_never(std::future::poll_fn(move |cx| {
            let polled = answer.as_mut().poll_frame(cx);
            Poll::Ready(polled.map(|frame| frame.is_some()))
        }))
    };
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(next_frame(), Some(Poll::Ready(true)));
    // hyper asks for nothing more while the client makes no room.
    assert_eq!(activity.next(), (70_000, Action::GoAway(Timeout::Send)));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(activity.next(), (70_000, Action::GoAway(Timeout::Send)));
    // Asked again: it waits for nothing.
    assert_eq!(next_frame(), Some(Poll::Ready(false)));
    assert_eq!(activity.next(), (115_000, Action::Wait));
    // HTTP/1.1 answers are timed by the socket's writes instead.
    let h1 = Activity::new(false, limits(), Arc::default());
    let full = http_body_util::Full::new(Bytes::from_static(b"page"));
    let _answer = Tracked::new(full, h1.request_started());
    assert!(h1.sending.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn too_many_cancelled_streams_ring_the_alarm() {
    let activity = Activity::new(true, limits(), Arc::default());
    drop(activity.request_started());
    drop(activity.request_started());
    let rung = activity.alarmed();
    tokio::pin!(rung);
    assert!(futures_util::poll!(rung.as_mut()).is_pending());
    tokio::time::advance(CANCELLED_STREAMS_WINDOW).await;
    drop(activity.request_started());
    drop(activity.request_started());
    assert!(futures_util::poll!(rung.as_mut()).is_pending());
    drop(activity.request_started());
    assert_eq!(futures_util::poll!(rung.as_mut()), Poll::Ready(CANCELLED));
}

/// A connection that ends at its second poll, after the supervisor registered its waker.
struct EndsSoon(bool);

impl Future for EndsSoon {
    type Output = Result<(), ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(Ok(()));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Graceful for EndsSoon {
    fn graceful_shutdown(self: Pin<&mut Self>) {}
}

#[tokio::test]
async fn an_ended_supervisor_leaves_no_waker_behind() {
    // A tunnel's reader and writer keep the activity; a waker left in it would keep the
    // ended connection task allocated.
    let activity = Activity::new(false, limits(), Arc::default());
    let (_stop, stopping) = watch::channel(false);
    let task = tokio::spawn({
        let activity = activity.clone();
        async move { supervise(EndsSoon(false), &activity, stopping).await }
    });
    assert_eq!(task.await.unwrap(), Ok(()));
    assert!(activity.supervisor.take().is_none());
}
