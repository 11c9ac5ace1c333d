"""``python -m gn_keras.train.video``: the ``gn-video`` command (see ``train.video.main``)."""

from gn_keras.train.video import main

main.run()
