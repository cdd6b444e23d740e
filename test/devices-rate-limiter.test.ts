/**
 * The token buckets behind --disk iops=/bw= and --net bw= (virtio/rate-limiter.ts), on an
 * explicit clock: Firecracker's semantics (full at start, continuous refill of size per
 * refill time, a one-time burst spent first, a request larger than the bucket let through into
 * debt), and a limiter that gives back what one bucket took when the other refuses.
 */
import { strict as assert } from 'assert';
import { RateLimiter, TokenBucket, describeRateLimit } from '../virtio/rate-limiter';

describe('virtio/rate-limiter token buckets', () => {
  it('starts full, refuses what it lacks, refills continuously at size per refill time', () => {
    const b = new TokenBucket(100, 1000, 0, 0);
    assert.ok(b.take(100, 0));
    assert.ok(!b.take(1, 0));
    assert.equal(b.waitMs(10, 0), 100);
    assert.ok(!b.take(10, 99));
    assert.ok(b.take(10, 100));
    assert.ok(b.take(50, 600));
    assert.ok(b.take(100, 5000), 'refilled');
    assert.ok(!b.take(1, 5000), 'refilled to size, not beyond');
  });

  it('spends the one-time burst first and never refills it', () => {
    const b = new TokenBucket(10, 1000, 20, 0);
    assert.ok(b.take(25, 0)); // 20 burst + 5
    assert.ok(b.take(5, 0));
    assert.ok(!b.take(1, 0));
    assert.ok(b.take(10, 1000));
    assert.ok(!b.take(1, 1000));
  });

  it('lets a request larger than the bucket through, then blocks for the debt', () => {
    const b = new TokenBucket(100, 1000, 0, 0);
    assert.ok(b.take(250, 0)); // budget 100 - 250 = -150
    assert.ok(!b.take(1, 0));
    assert.ok(!b.take(250, 1000), 'still in debt after 1 s (-50)');
    assert.equal(b.waitMs(250, 1000), 500);
    assert.ok(b.take(250, 1500));
  });

  it('a limiter takes a request from both buckets or from neither', () => {
    const l = RateLimiter.from({ ops: { size: 10, refillTimeMs: 1000, oneTimeBurst: 0 }, bandwidth: { size: 4096, refillTimeMs: 1000, oneTimeBurst: 0 } })!;
    assert.ok(l.consume(1, 4096, 0));
    assert.ok(!l.consume(1, 4096, 0));
    assert.equal(l.throttled, 1);
    // The refused request's op went back: 9 more one-op requests of 0 bytes pass at once.
    for (let i = 0; i < 9; i++) assert.ok(l.consume(1, 0, 0));
    assert.ok(!l.consume(1, 0, 0));
    assert.equal(l.waitMs(1, 4096, 0), 1000);
    assert.equal(RateLimiter.from(null), undefined);
    assert.equal(RateLimiter.from({ ops: null, bandwidth: null }), undefined);
    assert.equal(describeRateLimit({ ops: { size: 10, refillTimeMs: 1000 }, bandwidth: null }), '10 ops/s (burst 10)');
  });
});
