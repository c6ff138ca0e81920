/* The deliveries of a channel that consumes with acks, by delivery tag (the
 * broker numbers them 1, 2, 3... per channel), and the acks due at the end
 * of a batch of work: acks due together go as one basic.ack with multiple
 * set when every delivery up to the last of them is settled or being acked,
 * else one by one. A delivery counts as settled only once its ack, reject
 * or nack has been handed to rabbitmq-c (an ack held behind a held reply
 * is not). */
#ifndef AD_ACK_WINDOW_H
#define AD_ACK_WINDOW_H

#include <stddef.h>
#include <stdint.h>

struct ack_window {
  uint64_t base;         /* every tag below it is settled */
  uint64_t delivered;    /* the highest tag delivered */
  unsigned char *flags;  /* tag % capacity: 1 settled, for tags in [base, delivered] */
  size_t capacity;       /* a power of two, or 0 */
  uint64_t *due;         /* acks due, in the order they were made */
  size_t due_count, due_capacity;
};

void ack_window_init(struct ack_window *window);
void ack_window_free(struct ack_window *window);
/* A delivery arrived; -1 when out of memory (then nothing is ever acked
 * with multiple on this channel, which stays correct). */
int ack_window_delivered(struct ack_window *window, uint64_t tag);
/* Its ack, reject or nack was sent. */
void ack_window_settled(struct ack_window *window, uint64_t tag);
/* An ack due at the end of the batch; -1 when out of memory (send it now). */
int ack_window_due(struct ack_window *window, uint64_t tag);
/* Takes the acks due: *multiple_up_to is the tag of one ack with multiple
 * (0: none) covering every due tag up to it; the others are put in
 * singles[0..*single_count) (singles holds at least due_count tags), and
 * all count as settled from now. */
void ack_window_take_due(struct ack_window *window, uint64_t *multiple_up_to, uint64_t *singles,
                         size_t *single_count);

#endif
