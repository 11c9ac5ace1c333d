"""Detection data and evaluation for Mask R-CNN (paper §4.2).

:mod:`.coco` reads and checks COCO JSON + image folders, :mod:`.shapes`
writes the embedded generated set, :mod:`.pipeline` turns decoded examples
(COCO or TF Model Garden TFRecords) into padded batches with RPN targets,
:mod:`.evaluator` computes COCO box and mask AP with pycocotools.
"""
