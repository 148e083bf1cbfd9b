from __future__ import annotations

from django.urls import path

from . import views

app_name = "labeling"

urlpatterns = [
    path("", views.home, name="home"),
    path("history/", views.history, name="history"),
    path("history/ranking/<int:ranking_id>/", views.correct_ranking_page, name="correct-ranking"),
    path("history/demonstration/<int:demonstration_id>/", views.correct_demonstration_page,
         name="correct-demonstration"),
    path("preview/", views.markdown_preview, name="preview"),
    path("review/<int:project_id>/", views.review_page, name="review"),
    path("review/<int:project_id>/panel/", views.review_panel, name="review-panel"),
    path("invitations/<str:secret>/", views.invitation_page, name="invitation"),
    path("manage/projects/new/", views.new_project, name="new-project"),
    path("manage/projects/<int:project_id>/", views.manage_project, name="manage-project"),
    path("manage/projects/<int:project_id>/dashboard/", views.project_dashboard, name="project-dashboard"),
    path("manage/jobs/<int:job_id>/", views.manage_job, name="manage-job"),
    path("p/<int:project_id>/write/", views.write_prompt_page, name="write-prompt"),
    path("p/<int:project_id>/<str:kind>/", views.task_page, name="task"),
    path("p/<int:project_id>/<str:kind>/panel/", views.task_fragment, name="task-panel"),
]
