"""The shared-memory channel's driver messages: with steps in flight the driver may run ahead of
the slowest rank by as many messages as there are slots, and no further."""

from __future__ import annotations

import os
import threading
import uuid

from pagoda.distributed.shm_comm import ShmCommunicator, create_segment


def test_driver_runs_ahead_by_the_message_slots_and_messages_arrive_in_order():
    name = f"pagoda-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path = create_segment(name, world=2, slot_bytes=4096, message_bytes=1024, message_slots=3)
    driver = worker = None
    try:
        driver = ShmCommunicator(name, 0, 2, slot_bytes=4096, message_bytes=1024, message_slots=3)
        worker = ShmCommunicator(name, 1, 2, slot_bytes=4096, message_bytes=1024, message_slots=3)
        for i in range(3):  # three slots: none of these waits for the worker
            driver.send_message(f"step {i}".encode() * (i + 1))
        fourth = threading.Thread(target=driver.send_message, args=(b"step 3",))
        fourth.start()
        fourth.join(0.3)
        assert fourth.is_alive(), "the driver overwrote a message the worker had not read"
        assert worker.recv_message() == b"step 0"
        fourth.join(5)
        assert not fourth.is_alive()
        assert [worker.recv_message() for _ in range(3)] == [b"step 1" * 2, b"step 2" * 3, b"step 3"]
    finally:
        for comm in (driver, worker):
            if comm is not None:
                comm.close()
        os.unlink(path)
