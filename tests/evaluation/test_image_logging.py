import numpy as np

from segfm.evaluation import log_image, log_table


class WandbLike:
    def __init__(self):
        self.images, self.tables = [], []

    def log_image(self, key, images, step):
        self.images.append((key, images, step))

    def log_table(self, key, columns, data):
        self.tables.append((key, columns, data))


class TensorBoardLike:
    class Writer:
        def __init__(self):
            self.calls = []

        def add_image(self, key, image, global_step, dataformats):
            self.calls.append((key, image.shape, global_step, dataformats))

    def __init__(self):
        self.experiment = self.Writer()


class CSVLike:
    experiment = object()


def test_log_image_reaches_every_logger_that_shows_images():
    pic = np.zeros((4, 5, 3), np.uint8)
    w, tb, csv = WandbLike(), TensorBoardLike(), CSVLike()
    got = log_image([w, tb, csv], "overlays/a", pic, step=7)
    assert got == ["WandbLike", "TensorBoardLike"]
    assert w.images[0][0] == "overlays/a" and w.images[0][2] == 7
    assert tb.experiment.calls == [("overlays/a", (4, 5, 3), 7, "HWC")]


def test_log_table_only_to_table_loggers():
    w = WandbLike()
    assert log_table([w, CSVLike()], "t", ["a"], [[1]]) == ["WandbLike"]
    assert w.tables == [("t", ["a"], [[1]])]
