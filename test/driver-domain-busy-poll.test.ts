/**
 * driver-domain/busy-poll: after serving a queue the driver-domain spins
 * for the guest's answer; work the guest adds in the window is served
 * without a kick, `side` work runs during the wait and extends it while it
 * finds something, and a poll that missed backs off (the next chances are
 * skipped without spinning). Kicks are enabled again whenever it returns.
 */
import { strict as assert } from 'assert';
import { BusyPoll } from '../driver-domain/busy-poll';
import { makeTestBed } from '../virtio/testbed';
import { Virtqueue } from '../virtio/virtqueue';
import { features, VIRTIO_F_VERSION_1, VIRTIO_F_RING_EVENT_IDX } from '../contracts/virtio-mmio-layout';

function bed() {
  const tb = makeTestBed({ deviceId: 2, vendorId: 1, numQueues: 1, queueNumMax: 16, deviceFeatures: features(VIRTIO_F_VERSION_1, VIRTIO_F_RING_EVENT_IDX), config: new Uint8Array(8) });
  const vq = new Virtqueue(tb.mem, tb.slot, 0);
  assert.ok(vq.activate().ok);
  const d = tb.drivers[0];
  const post = () => d.publish(d.addChain([{ addr: tb.dataBase, len: 16 }]));
  let served = 0;
  // As a device's kick handler does (queue-runner's drain): pop everything, leave kicks enabled.
  const serve = () => {
    let n = 0;
    do {
      for (let r = vq.pop(); r.kind === 'chain'; r = vq.pop()) {
        assert.ok(vq.push(r.chain.head, 0));
        n++;
      }
    } while (vq.enableNotify());
    served += n;
    return n;
  };
  /** avail_event as the driver sees it: equal to the avail idx means "kick me for the next buffer". */
  const kicksEnabled = () => new Uint16Array(tb.ram.buffer, d.ring.used + 4 + 8 * d.ring.size, 1)[0] === vq.progress.lastAvailIdx;
  return { vq, post, serve, served: () => served, kicksEnabled };
}

describe('driver-domain/busy-poll', () => {
  it('serves what the guest adds during the window, found by polling, and returns with kicks enabled', () => {
    const b = bed();
    const poll = new BusyPoll(50_000);
    let sides = 0;
    // The "guest" answers while the poll spins: side work runs every few microseconds of the wait.
    poll.follow(b.vq, b.serve, false, () => {
      if (++sides === 3) b.post();
      return 0;
    });
    assert.equal(b.served(), 1);
    assert.equal(poll.hits, 1);
    assert.ok(sides >= 3);
    assert.ok(b.kicksEnabled(), 'kicks enabled again');
  });

  it('side work that finds something extends the window; a miss backs off without spinning', () => {
    const b = bed();
    const poll = new BusyPoll(100); // 100 us
    let sides = 0;
    // Busy for its first 60 calls (>= 300 us at one call per 5 us: three windows), then idle.
    poll.follow(b.vq, b.serve, false, () => (++sides <= 60 ? 1 : 0));
    assert.ok(sides > 60, `side ran ${sides} times: the window was extended while it found work`);
    assert.equal(poll.misses, 1);
    assert.equal(b.served(), 0);
    assert.ok(b.kicksEnabled());
    // Backed off: the next poll skips at once (no side work, no spinning).
    const before = sides;
    poll.follow(b.vq, b.serve, false, () => (++sides, 0));
    assert.equal(sides, before);
    assert.equal(poll.misses, 1);
    assert.ok(b.kicksEnabled());
  });

  it('a zero window never polls', () => {
    const b = bed();
    b.post();
    new BusyPoll(0).follow(b.vq, b.serve, true, () => assert.fail('no side work without a window'));
    assert.equal(b.served(), 0, 'left to the kick');
  });
});
