"""`yollava` as the pseudo-terminal Ctrl-C test in test_chat.py runs it, with one test-only hook:
once an answer has streamed its first token, generation waits (as a slow model would) until a
Ctrl-C interrupts it, and appends a line to the file named by $YOLLAVA_TEST_BLOCKED to say it is
waiting. The test sends its Ctrl-C only then, so it always lands mid-answer, however loaded the
machine and whatever the model would have said. Nothing here is in the package."""

import os
import sys
import time

from yollava_cli.cli import main
from yollava_cli.models import decoding

WAIT_S = 120  # no Ctrl-C by then: the answer goes on, and the test fails on its missing "[stopped]"
streamed = decoding.CallbackStreamer.put


def put_then_wait(self, value):
    streamed(self, value)
    if self.ids:  # the answer's first token is out: it is mid-answer now
        with open(os.environ["YOLLAVA_TEST_BLOCKED"], "a") as f:
            f.write("waiting\n")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.01)  # where the Ctrl-C's KeyboardInterrupt arrives


decoding.CallbackStreamer.put = put_then_wait
sys.argv[0] = "yollava"
sys.exit(main())
