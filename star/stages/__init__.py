"""The stages of a STaR iteration, one module each; star/loop.py runs them in order.

    generate     every training question answered by M(n-1)              (generate.py)
    rationalize  the failures retried with the gold answer as a hint      (rationalize.py)
    train        filter the correct, hint-free examples; fine-tune -> M(n) (train.py)
    eval         M(n) on dev                                              (evaluate.py)
    log          metrics.json, W&B, metrics.csv                           (log.py)

A stage is a function (ctx: StageContext, iteration) -> dict: it writes its files atomically and
returns what its marker holds (counts; the loop adds the time). context.py holds what they share.
"""
