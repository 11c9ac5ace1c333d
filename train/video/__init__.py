"""Video classification pieces (the paper's §4.3): clips, sources, pipeline, export.

* ``clips``: ``ClipSpec`` (frames, frame stride, sizes, test views) and the
  frame-index and crop rules of training, validation and the 10-clip test;
  ``average_view_probabilities`` (the 10-clip softmax average).
* ``sources``: where videos come from (TFRecords of SequenceExamples,
  folder trees of frame folders or video files, TFDS, and the embedded
  ``moving_shapes`` set), each as a ``VideoSource``.
* ``data``: ``VideoPipeline``, per-replica train / validation / test
  datasets in the shape ``gn_keras.train.task.TaskData`` asks for.
* ``export``: a SavedModel that takes uint8 clips.
"""
